"""The default setup on the engine ``./dev`` builds (for the CPU, with homeport's patch): runners
ask for the same logits at any step size, so the default speculates and no setting of
HOMEPORT_SPECULATION changes an answer (tests/test_speculation.py serves both); flash attention
asked for by name is the setup for speed alone, llama.cpp's fastest kernels."""

from __future__ import annotations

from homeport.engine.llama_types import STEP_INVARIANT_KERNELS, ContextSettings, kernel_environment
from homeport.engine.service import exact_by_default, exact_engine


def test_this_engine_is_exact() -> None:
    assert exact_engine()


def test_the_default_is_exact_and_flash_attention_by_name_is_not() -> None:
    assert exact_by_default("auto")
    assert not exact_by_default("on")
    assert not exact_by_default("off")  # exact all the same: see below


def test_which_runners_ask_for_the_step_invariant_kernels() -> None:
    plain = ContextSettings(n_ctx_per_seq=4096, n_seq=4, flash_attention="on", speculation=False)
    assert kernel_environment(plain) == {}
    for exact in (ContextSettings(n_ctx_per_seq=4096, n_seq=4, speculation=False, exact=True),
                  ContextSettings(n_ctx_per_seq=4096, n_seq=4, flash_attention="on"),
                  ContextSettings(n_ctx_per_seq=4096, n_seq=4, flash_attention="off",
                                  speculation=False)):
        assert kernel_environment(exact) == STEP_INVARIANT_KERNELS
