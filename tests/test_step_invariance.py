"""Speculation and batching are exact only if a token's logits do not depend on how many tokens
its step holds.

A runner that speculates, or runs without flash attention, loads its model without ggml's
repacked CPU weights and its tiled K-quant kernels (``kernel_environment``, ``LlamaModel``), and
its scheduler gives a lone token a pad token, as llamafile's kernels sum two or more tokens in
another order than one (``engine.step_shape``); these tests load Gemma 3 270M (Q4_K, Q5_0, Q8_0)
as such a runner would, in a process of its own (ggml reads its switches once per process), and
compare each position's logits, bit for bit, decoded one token a step and several. Without the
pad, or loaded for speed (flash attention on, no speculation: the default), the same model's
logits do change with the step size: what the first tests guard against.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.models import gemma_gguf
from tests.support.server import PROJECT_SRC


def _positions_that_differ(step: int, *, speculation: str, flash_attention: str,
                           pad: bool = True) -> int:
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.step_logits", str(gemma_gguf()),
         "--speculation", speculation, "--flash-attention", flash_attention, "--step", str(step),
         *([] if pad else ["--no-pad"])],
        capture_output=True, text=True, timeout=600, check=True,
        env={**{name: value for name, value in os.environ.items()
                if not name.startswith("GGML_")},
             "PYTHONPATH": f"{PROJECT_SRC}:{PROJECT_SRC.parent}"})
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["positions"] == 48
    return int(outcome["differ"])


@pytest.mark.parametrize("step", [2, 4, 8, 16])
def test_a_speculating_runners_logits_do_not_depend_on_the_step_size(step: int) -> None:
    assert _positions_that_differ(step, speculation="true", flash_attention="off") == 0


def test_without_flash_attention_they_do_not_either() -> None:
    assert _positions_that_differ(8, speculation="false", flash_attention="off") == 0


def test_without_the_pad_they_do() -> None:
    assert _positions_that_differ(8, speculation="true", flash_attention="off", pad=False) > 0


def test_loaded_for_speed_they_do() -> None:
    assert _positions_that_differ(8, speculation="false", flash_attention="on") > 0
