"""Per-identity limits: requests running at once, requests per minute, tokens per minute.

Windows slide over the last 60 seconds. A refused request gets 429 with Retry-After: the seconds
until the oldest counted request (or enough counted tokens) leave the window. Tokens are counted
when a request ends (finished or cut short), so a long answer counts against the next request.
State is kept per identity and dropped once an identity is idle, so memory stays bounded.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from homeport.errors import RateLimitedError
from homeport.net.caller import Caller

WINDOW = 60.0
SWEEP_ABOVE = 1024  # identities tracked before idle ones are swept out


@dataclass
class _Usage:
    running: int = 0
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)

    def prune(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - WINDOW:
            self.tokens.popleft()

    def idle(self) -> bool:
        return self.running == 0 and not self.requests and not self.tokens


def _wait(until: float, now: float) -> int:
    return max(1, math.ceil(until - now))


class Limiter:
    """Admits or refuses requests per identity; ``clock`` is injectable for unit tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._usage: dict[str, _Usage] = {}

    def admit(self, caller: Caller) -> None:
        """Count a starting request, or raise RateLimitedError (429) naming the limit."""
        limits = caller.grant.limits
        if caller.is_local or limits == type(limits)():
            return
        now = self._clock()
        if len(self._usage) > SWEEP_ABOVE:
            self._sweep(now)
        usage = self._usage.setdefault(caller.identity, _Usage())
        usage.prune(now)
        who = caller.identity
        if limits.concurrent_requests is not None and usage.running >= limits.concurrent_requests:
            raise RateLimitedError(
                f"{who} already has {usage.running} requests running (the limit is "
                f"{limits.concurrent_requests}); wait for one to finish", retry_after=1)
        if limits.requests_per_minute is not None and (
                len(usage.requests) >= limits.requests_per_minute):
            wait = _wait(usage.requests[0] + WINDOW, now)
            raise RateLimitedError(
                f"{who} reached {limits.requests_per_minute} requests per minute; "
                f"try again in {wait} s", retry_after=wait)
        if limits.tokens_per_minute is not None:
            used = sum(count for _, count in usage.tokens)
            if used >= limits.tokens_per_minute:
                wait = self._tokens_free_at(usage, used, limits.tokens_per_minute, now)
                raise RateLimitedError(
                    f"{who} used {used} tokens in the last minute (the limit is "
                    f"{limits.tokens_per_minute}); try again in {wait} s", retry_after=wait)
        usage.running += 1
        usage.requests.append(now)

    @staticmethod
    def _tokens_free_at(usage: _Usage, used: int, limit: int, now: float) -> int:
        for moment, count in usage.tokens:
            used -= count
            if used < limit:
                return _wait(moment + WINDOW, now)
        return 1

    def finish(self, caller: Caller, tokens: int) -> None:
        """The request ended, having used ``tokens`` (prompt and generated)."""
        usage = self._usage.get(caller.identity)
        if usage is None:
            return
        now = self._clock()
        usage.running = max(0, usage.running - 1)
        if tokens > 0 and caller.grant.limits.tokens_per_minute is not None:
            usage.tokens.append((now, tokens))
        usage.prune(now)
        if usage.idle():
            del self._usage[caller.identity]

    def _sweep(self, now: float) -> None:
        for identity, usage in list(self._usage.items()):
            usage.prune(now)
            if usage.idle():
                del self._usage[identity]

    def tracked(self) -> int:
        return len(self._usage)
