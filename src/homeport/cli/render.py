"""Showing an answer as it streams: Markdown on a terminal, plain text down a pipe."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markdown import Markdown
from rich.text import Text

from homeport.client.adapters import ChatEvent, TextDelta, ThinkingDelta

# Re-rendering Markdown costs more as the answer grows; a few frames a second is smooth enough.
FRAME_SECONDS = 0.08


class AnswerView:
    """A context manager fed with chat events; ``markdown=False`` writes text as it comes."""

    def __init__(self, console: Console, markdown: bool) -> None:
        self.console = console
        self.markdown = markdown
        self.text: list[str] = []
        self.thinking: list[str] = []
        self._live: Live | None = None
        self._shown_at = 0.0

    def __enter__(self) -> AnswerView:
        if self.markdown:
            self._live = Live(console=self.console, auto_refresh=False,
                              vertical_overflow="ellipsis", transient=False)
            self._live.__enter__()
        return self

    def feed(self, event: ChatEvent) -> None:
        if isinstance(event, TextDelta):
            self.text.append(event.text)
            if not self.markdown:
                sys.stdout.write(event.text)
                sys.stdout.flush()
        elif isinstance(event, ThinkingDelta):
            self.thinking.append(event.text)
        if self._live is not None and time.monotonic() - self._shown_at >= FRAME_SECONDS:
            self._show()

    def _renderable(self) -> RenderableType:
        parts: list[RenderableType] = []
        if self.thinking:
            parts.append(Text("".join(self.thinking).strip(), style="dim italic"))
        parts.append(Markdown("".join(self.text)))
        return Group(*parts)

    def _show(self) -> None:
        assert self._live is not None
        self._live.update(self._renderable(), refresh=True)
        self._shown_at = time.monotonic()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._live is not None:
            self._show()
            # Live prints the whole answer once more as it stops, past the screen's height.
            self._live.__exit__(exc_type, exc, traceback)
        elif self.text and not "".join(self.text).endswith("\n"):
            sys.stdout.write("\n")
            sys.stdout.flush()
