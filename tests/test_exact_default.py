"""The default setup on the engine ``./dev`` builds (for the CPU, with homeport's patch): runners
ask for the same logits at any step size, so the default speculates and no setting of
HOMEPORT_SPECULATION changes an answer (tests/test_speculation.py serves both); flash attention
asked for by homeport's name is the setup for speed alone, llama.cpp's fastest kernels
(Ollama's OLLAMA_FLASH_ATTENTION=1 keeps the default)."""

from __future__ import annotations

import pytest

from homeport.engine.llama_types import STEP_INVARIANT_KERNELS, ContextSettings, kernel_environment
from homeport.engine.service import chosen_flash_attention, exact_by_default, exact_engine
from homeport.server import engine_settings


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


def test_ollamas_flash_attention_switch_keeps_the_exact_default() -> None:
    """OLLAMA_FLASH_ATTENTION=1 asks for flash attention, which the default has on this engine:
    it keeps the default's exact kernels and speculation; homeport's own name asks for speed."""
    assert chosen_flash_attention("on", by_name=False) == "auto"
    assert chosen_flash_attention("on", by_name=True) == "on"
    assert chosen_flash_attention("off", by_name=False) == "off"
    assert chosen_flash_attention("auto", by_name=True) == "auto"


@pytest.mark.parametrize(("name", "by_name"), [("OLLAMA_FLASH_ATTENTION", False),
                                               ("HOMEPORT_FLASH_ATTENTION", True)])
def test_the_server_says_which_name_set_flash_attention(
        monkeypatch: pytest.MonkeyPatch, name: str, by_name: bool) -> None:
    for variable in ("OLLAMA_FLASH_ATTENTION", "HOMEPORT_FLASH_ATTENTION"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv(name, "1")
    settings = engine_settings()
    assert settings.flash_attention == "on"
    assert settings.flash_attention_by_name is by_name
