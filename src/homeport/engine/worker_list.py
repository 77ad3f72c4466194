"""The RPC workers a model load may place layers on, read afresh at every load: those configured
(HOMEPORT_RPC_WORKERS) first, then those found on the tailnet (``mesh.worker_discovery``), which
come and go while the server runs; and each one's last probe as the server saw it (``mesh.worker_probe``),
for ``/api/homeport/nodes``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from homeport import config

# What the model manager calls before each load for the workers' ``host:port`` endpoints.
WorkerSource = Callable[[], tuple[str, ...]]


def merge_workers(configured: Iterable[str], discovered: Iterable[str],
                  limit: int = config.MAX_RPC_WORKERS) -> tuple[str, ...]:
    """Configured workers first, then discovered ones, each once, at most ``limit`` (ggml's
    GGML_RPC_MAX_SERVERS)."""
    return tuple(dict.fromkeys([*configured, *discovered]))[:max(0, limit)]


@dataclass(frozen=True)
class Seen:
    """A worker's last probe, in ``time.monotonic()`` seconds."""

    accepting: bool
    checked: float
    last_accepted: float | None = None  # None: never seen accepting since the server started


@dataclass(frozen=True)
class Worker:
    endpoint: str  # host:port
    peer: str = ""  # the tailnet peer it was found on; empty: configured
    seen: Seen | None = None  # None: not probed yet


class WorkerList:
    """The configured workers and those discovery found last; calling it gives the merged list."""

    def __init__(self, configured: tuple[str, ...] = ()) -> None:
        self.configured = configured
        self._discovered: dict[str, str] = {}  # endpoint → peer name
        self._seen: dict[str, Seen] = {}

    @property
    def discovered(self) -> tuple[str, ...]:
        return tuple(self._discovered)

    def set_discovered(self, found: Mapping[str, str]) -> None:
        """The workers found now (endpoint → the peer's name), replacing those found before."""
        self._discovered = dict(found)
        for endpoint in set(self._seen) - set(self.configured) - set(found):
            del self._seen[endpoint]

    def saw(self, endpoint: str, accepting: bool, now: float | None = None) -> None:
        """How ``endpoint``'s probe went just now."""
        now = time.monotonic() if now is None else now
        before = self._seen.get(endpoint)
        last = now if accepting else before.last_accepted if before is not None else None
        self._seen[endpoint] = Seen(accepting, now, last)

    def seen(self, endpoint: str) -> Seen | None:
        return self._seen.get(endpoint)

    def __call__(self) -> tuple[str, ...]:
        return merge_workers(self.configured, self._discovered)

    def listing(self) -> list[Worker]:
        """The merged list with where each worker came from and how its last probe went."""
        return [Worker(endpoint, "" if endpoint in self.configured
                       else self._discovered.get(endpoint, ""), self._seen.get(endpoint))
                for endpoint in self()]
