"""Ctrl-C while an answer streams, noticed even where Python drops the KeyboardInterrupt.

Python raises KeyboardInterrupt wherever the main thread happens to be when SIGINT arrives. If
that is a finaliser (a ``__del__``, a generator closed by the garbage collector: rendering
Markdown makes many), the exception is printed as "ignored" and the answer goes on streaming, so
the user's Ctrl-C is lost. Here the handler also remembers the press, and the streaming loop
checks it at each event.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any


class Interrupts:
    """A context manager: within it, Ctrl-C raises KeyboardInterrupt as usual and ``check()``
    raises it again at the caller's next safe point if the first one was swallowed. Outside the
    main thread (where no signal handler can be set) it only does what Python does."""

    def __init__(self) -> None:
        self.pressed = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed since entering."""
        if self.pressed:
            raise KeyboardInterrupt

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
