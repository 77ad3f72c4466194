"""Stop strings: their bounds, and finding them in a stream of text a token at a time.

A stream holds back the end of its text that could still grow into a stop string. Each token then
costs a search for the stops (one compiled pattern, from where new text can complete one) and a
scan of the held text and the new text for the start of a stop, by first character: time in
proportion to the new text, not to the number of stops or to everything said so far (20,000 stops
once added 12 ms to every token of every stream on the model). The bounds keep the worst case,
stops that overlap themselves, under a millisecond a token.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from homeport.errors import InvalidOptionError

MAX_STOPS = 64
MAX_STOP_LENGTH = 256  # characters


def check_stops(stops: Sequence[str]) -> None:
    """Raise InvalidOptionError (a 400) for too many stop strings or one too long."""
    if len(stops) > MAX_STOPS:
        raise InvalidOptionError(
            f'option "stop" has {len(stops)} strings, over the limit of {MAX_STOPS}')
    for stop in stops:
        if len(stop) > MAX_STOP_LENGTH:
            raise InvalidOptionError(
                f'option "stop" has a string of {len(stop)} characters, over the limit of '
                f"{MAX_STOP_LENGTH}")


class StopFinder:
    """Feed text as it comes; get back what may be sent on, and whether a stop string was met."""

    def __init__(self, stops: Sequence[str]) -> None:
        stops = [stop for stop in stops if stop]
        self._pattern = re.compile("|".join(map(re.escape, stops))) if stops else None
        self._longest = max(map(len, stops), default=0)
        self._by_first: dict[str, list[str]] = {}
        for stop in stops:
            self._by_first.setdefault(stop[0], []).append(stop)
        self.held = ""  # the end of the text so far that may be the start of a stop

    def feed(self, text: str) -> tuple[str, bool]:
        """The text that can be sent on, and True when a stop string ends in it (the stop and
        everything after it are dropped)."""
        if self._pattern is None:
            return text, False
        before = len(self.held)
        held = self.held + text
        # The held text holds no whole stop, so a new one ends inside ``text``.
        found = self._pattern.search(held, max(0, before - self._longest + 1))
        if found:
            self.held = ""
            return held[:found.start()], True
        keep = self._partial_start(held)
        self.held = held[keep:]
        return held[:keep], False

    def _partial_start(self, held: str) -> int:
        """Where the longest end of ``held`` that is the start of some stop string begins."""
        for index in range(len(held)):
            candidates = self._by_first.get(held[index])
            if candidates:
                tail = held[index:]
                if any(stop.startswith(tail) for stop in candidates):
                    return index
        return len(held)

    def flush(self) -> str:
        """What is still held back, once the stream has ended without a stop."""
        rest, self.held = self.held, ""
        return rest
