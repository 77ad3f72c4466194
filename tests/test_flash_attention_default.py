"""HOMEPORT_FLASH_ATTENTION=auto, decided by homeport on the engine ``./dev`` builds (for the CPU,
with homeport's patch): off while a step's attention scores stay small, so that the default setup
is exact and speculates (tests/test_speculation.py serves it); left to llama.cpp for long
contexts, where llama.cpp would hold a step's scores in memory the estimate does not count, and
for a quantized K/V cache, which needs flash attention."""

from __future__ import annotations

from homeport.engine.memory import attention_scores_bytes
from homeport.engine.service import (
    FLASH_ATTENTION_OFF_SCORES_LIMIT,
    decided_flash_attention,
    exact_engine,
)
from homeport.store.gguf import read_gguf
from tests.support.models import bundled_gguf


def test_this_engine_is_exact() -> None:
    assert exact_engine()


def test_auto_is_off_for_the_bundled_model_at_its_usual_context() -> None:
    smollm2 = read_gguf(bundled_gguf())
    scores = attention_scores_bytes(smollm2, 4096, 512)
    assert scores == 4 * 512 * 4096 * 9  # SmolLM2-135M has 9 attention heads
    assert decided_flash_attention("auto", "f16", scores) == "off"


def test_auto_is_left_to_llama_cpp_where_the_scores_would_be_large() -> None:
    smollm2 = read_gguf(bundled_gguf())
    scores = attention_scores_bytes(smollm2, 32768, 512)
    assert scores > FLASH_ATTENTION_OFF_SCORES_LIMIT
    assert decided_flash_attention("auto", "f16", scores) == "auto"


def test_a_quantized_cache_or_a_choice_is_kept() -> None:
    assert decided_flash_attention("auto", "q8_0", 1) == "auto"
    assert decided_flash_attention("on", "f16", 1) == "on"
    assert decided_flash_attention("off", "f16", 1) == "off"
