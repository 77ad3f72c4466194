"""Ctrl-C during a streamed answer is not lost where Python swallows the KeyboardInterrupt."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from homeport.cli.interrupts import Interrupts


def _press_ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(1000):  # the handler runs at one of these bytecodes
        pass


class _SignalsWhileFinalised:
    """Sends SIGINT to this process from its finaliser, where Python prints and drops the
    KeyboardInterrupt that the handler raises."""

    def __del__(self) -> None:
        _press_ctrl_c()


def test_a_ctrl_c_swallowed_by_a_finaliser_is_raised_at_the_next_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    swallowed: list[type[BaseException]] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: swallowed.append(info.exc_type))
    with Interrupts() as interrupts:
        _SignalsWhileFinalised()  # finalised at once: nothing holds it
        assert swallowed == [KeyboardInterrupt], "Python dropped the interrupt, as it does"
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()


def test_ctrl_c_raises_as_usual_and_the_old_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGINT)
    interrupts = Interrupts()
    with pytest.raises(KeyboardInterrupt), interrupts:
        _press_ctrl_c()
    assert interrupts.pressed
    assert signal.getsignal(signal.SIGINT) is before


def test_no_check_raises_without_a_ctrl_c() -> None:
    with Interrupts() as interrupts:
        interrupts.check()
    assert not interrupts.pressed
