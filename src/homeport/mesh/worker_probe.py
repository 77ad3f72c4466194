"""Is an RPC worker there, and how often to ask: the bare-connect probe that worker discovery and
the configured workers' check share, and the backoff that keeps them from knocking every look on a
door that stays shut.

A probe opens a TCP connection and closes it without sending anything: the worker's gate forwards
nothing to ggml until a first byte, so a bare connect is the liveness check it expects. The
connection is held open a moment first: a gate whose policy refuses this node closes it at once
(after whois), one that admits it waits for the first byte.

A worker that did not accept is asked again after 1, 2, 4, 8, ... looks (30 s, 60 s, 2 min, ...
at the default 30 s between looks), at most every ``RETRY_CAP`` seconds' worth of looks (10 min);
one that accepts is asked at every look. The schedule counts looks, not seconds, so it is a pure
function of how many times in a row the worker did not accept (``looks_between``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math

WORKER_CONNECT_TIMEOUT = 1.0  # seconds: a tailnet peer that answers at all answers by then
# Seconds a connection must stay open, silent, to count: a refusing gate closes it sooner.
WORKER_SETTLE = 1.0
RETRY_CAP = 600.0  # seconds: the longest a worker that did not accept waits to be asked again


async def accepts_connection(endpoint: str, timeout: float = WORKER_CONNECT_TIMEOUT,
                             settle: float = WORKER_SETTLE) -> bool:
    """Whether ``endpoint`` accepts a TCP connection and keeps it open, saying nothing, for
    ``settle`` seconds; it is closed without a byte sent."""
    host, _, port = endpoint.rpartition(":")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)),
                                                timeout=timeout)
    except (OSError, TimeoutError):
        return False
    try:
        await asyncio.wait_for(reader.read(1), timeout=settle)
    except TimeoutError:
        return True  # still open and waiting for us: a gate that admitted this node
    except OSError:
        return False  # reset
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return False  # closed (refused), or it spoke first: not a worker's gate


def looks_between(failures: int, interval: float, cap: float = RETRY_CAP) -> int:
    """How many looks, ``interval`` seconds apart, from one probe of a worker to the next, after
    it did not accept ``failures`` times in a row: 1 (every look) until it fails, then doubling
    from 1, at most ``cap`` seconds' worth (and at least 1)."""
    if failures <= 1:
        return 1
    most = max(1, math.floor(cap / interval)) if interval > 0 else 1
    return min(1 << min(failures - 1, 62), most)


class ProbeBackoff:
    """Which endpoints are due a probe at this look, by ``looks_between``.

    ``due`` is asked once per endpoint per look; ``record`` says how its probe went; ``keep``
    forgets the endpoints no longer looked at, so one that comes back is probed at once."""

    def __init__(self, interval: float, cap: float = RETRY_CAP) -> None:
        self.interval = interval
        self.cap = cap
        self._failures: dict[str, int] = {}
        self._skip: dict[str, int] = {}  # looks left to pass over before the next probe

    def due(self, endpoint: str) -> bool:
        skip = self._skip.get(endpoint, 0)
        if skip > 0:
            self._skip[endpoint] = skip - 1
            return False
        return True

    def record(self, endpoint: str, accepted: bool) -> None:
        if accepted:
            self._failures.pop(endpoint, None)
            self._skip.pop(endpoint, None)
            return
        failures = self._failures.get(endpoint, 0) + 1
        self._failures[endpoint] = failures
        self._skip[endpoint] = looks_between(failures, self.interval, self.cap) - 1

    def failures(self, endpoint: str) -> int:
        return self._failures.get(endpoint, 0)

    def keep(self, endpoints: set[str]) -> None:
        """Forget every endpoint not in ``endpoints``."""
        for gone in set(self._failures) - endpoints:
            del self._failures[gone]
            self._skip.pop(gone, None)
