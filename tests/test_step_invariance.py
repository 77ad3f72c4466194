"""Speculation and batching are exact only if a token's logits do not depend on how many tokens
its step holds.

A runner that speculates, or runs without flash attention, loads its model without ggml's
repacked CPU weights and its tiled K-quant kernels, and asks the engine's patch for kernels whose
sums do not depend on the step (``kernel_environment``, ``engine-patches/``): llamafile's kernels
take one-token steps too, and flash attention computes each query alone. Then the scheduler needs
no pads. An engine without the patch is found out (``LlamaModel.steps_sum_alike``) and a lone token
gets a pad token (``engine.step_shape``). These tests load Gemma 3 270M (Q4_K, Q5_0, Q8_0) as such
a runner would, in a process of its own (ggml reads its switches once per process), and compare
each position's logits, bit for bit, decoded one token a step and several. Without the patch and
without the pad, or loaded for speed (no speculation, flash attention on: llama.cpp's own
setup), the same model's logits do change with the step size: what the tests guard against.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.support.models import gemma_gguf
from tests.support.server import PROJECT_SRC


def _step_logits(step: int, *, speculation: str, flash_attention: str,
                 pad: bool = True, unpatched: bool = False, positions: int = 48) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.step_logits", str(gemma_gguf()),
         "--speculation", speculation, "--flash-attention", flash_attention, "--step", str(step),
         "--positions", str(positions),
         *([] if pad else ["--no-pad"]), *(["--unpatched"] if unpatched else [])],
        capture_output=True, text=True, timeout=600, check=True,
        env={**{name: value for name, value in os.environ.items()
                if not name.startswith("GGML_")},
             "PYTHONPATH": f"{PROJECT_SRC}:{PROJECT_SRC.parent}"})
    outcome: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["positions"] == positions
    return outcome


@pytest.mark.parametrize("step", [2, 4, 8, 16])
def test_a_speculating_runners_logits_do_not_depend_on_the_step_size(step: int) -> None:
    outcome = _step_logits(step, speculation="true", flash_attention="off")
    assert outcome == {"positions": 48, "differ": 0, "padded": False}


def test_without_flash_attention_they_do_not_either() -> None:
    outcome = _step_logits(8, speculation="false", flash_attention="off")
    assert outcome == {"positions": 48, "differ": 0, "padded": False}


def test_an_engine_without_the_patch_is_found_out_and_padded() -> None:
    outcome = _step_logits(8, speculation="true", flash_attention="off", unpatched=True)
    assert outcome == {"positions": 48, "differ": 0, "padded": True}


def test_without_the_patch_and_the_pad_they_do() -> None:
    assert _step_logits(8, speculation="true", flash_attention="off", unpatched=True,
                        pad=False)["differ"] > 0


@pytest.mark.parametrize("step", [4, 16])
def test_with_flash_attention_neither(step: int) -> None:
    outcome = _step_logits(step, speculation="true", flash_attention="on")
    assert outcome == {"positions": 48, "differ": 0, "padded": False}


def test_nor_in_a_step_longer_than_the_kernels_span() -> None:
    """The engine's own Q8_0/Q5_0 kernel packs a step's tokens 64 at a time
    (``engine-patches/homeport_wide_q0.inc``): 96 positions in one step cross that boundary."""
    outcome = _step_logits(96, speculation="true", flash_attention="on", positions=96)
    assert outcome == {"positions": 96, "differ": 0, "padded": False}


def test_with_flash_attention_an_engine_without_the_patch_pads() -> None:
    outcome = _step_logits(4, speculation="true", flash_attention="on", unpatched=True)
    assert outcome == {"positions": 48, "differ": 0, "padded": True}


def test_loaded_for_speed_they_do() -> None:
    assert _step_logits(8, speculation="false", flash_attention="on")["differ"] > 0
