"""The RPC workers a model load may place layers on, read afresh at every load: those configured
(HOMEPORT_RPC_WORKERS) first, then those found on the tailnet (``mesh.worker_discovery``), which
come and go while the server runs."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from homeport import config

# What the model manager calls before each load for the workers' ``host:port`` endpoints.
WorkerSource = Callable[[], tuple[str, ...]]


def merge_workers(configured: Iterable[str], discovered: Iterable[str],
                  limit: int = config.MAX_RPC_WORKERS) -> tuple[str, ...]:
    """Configured workers first, then discovered ones, each once, at most ``limit`` (ggml's
    GGML_RPC_MAX_SERVERS)."""
    return tuple(dict.fromkeys([*configured, *discovered]))[:max(0, limit)]


class WorkerList:
    """The configured workers and those discovery found last; calling it gives the merged list."""

    def __init__(self, configured: tuple[str, ...] = ()) -> None:
        self.configured = configured
        self._discovered: tuple[str, ...] = ()

    @property
    def discovered(self) -> tuple[str, ...]:
        return self._discovered

    def set_discovered(self, endpoints: Iterable[str]) -> None:
        self._discovered = tuple(endpoints)

    def __call__(self) -> tuple[str, ...]:
        return merge_workers(self.configured, self._discovered)
