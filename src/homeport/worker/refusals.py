"""How often the worker's gate says it refused a peer: the first refusal of a peer (for a given
reason) is logged at once; the same peer refused again for the same reason is logged at most once
per ``INTERVAL``, with how many were refused unsaid in between. A server on the tailnet that
probes the worker now and then (``serve --tailnet``) would otherwise add a line each time."""

from __future__ import annotations

INTERVAL = 600.0  # seconds between two lines about the same peer refused for the same reason
MOST_PEERS = 1024  # peers remembered; the oldest is forgotten (its next refusal is logged)


class RefusalLog:
    """Decides which refusals make a log line; time is passed in (``time.monotonic()``)."""

    def __init__(self, interval: float = INTERVAL, most: int = MOST_PEERS) -> None:
        self.interval = interval
        self.most = most
        # (peer, reason) → when it was last logged, refusals not logged since
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def note(self, peer: str, reason: str, now: float) -> int | None:
        """A refusal of ``peer`` for ``reason`` at ``now``: None to stay quiet, or how many
        refusals went unsaid since its last line (0 for the first) when it is to be logged."""
        key = (peer, reason)
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return None
        self._last.pop(key, None)
        self._last[key] = (now, 0)  # last in order: the most recently logged
        while len(self._last) > self.most:
            del self._last[next(iter(self._last))]
        return last[1] if last is not None else 0
