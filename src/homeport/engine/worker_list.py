"""The RPC workers a model load may place layers on, read afresh at every load: those configured
(HOMEPORT_RPC_WORKERS) first, then those found on the tailnet (``mesh.worker_discovery``), which
come and go while the server runs."""

from __future__ import annotations

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
class Worker:
    endpoint: str  # host:port
    peer: str = ""  # the tailnet peer it was found on; empty: configured


class WorkerList:
    """The configured workers and those discovery found last; calling it gives the merged list."""

    def __init__(self, configured: tuple[str, ...] = ()) -> None:
        self.configured = configured
        self._discovered: dict[str, str] = {}  # endpoint → peer name

    @property
    def discovered(self) -> tuple[str, ...]:
        return tuple(self._discovered)

    def set_discovered(self, found: Mapping[str, str]) -> None:
        """The workers found now (endpoint → the peer's name), replacing those found before."""
        self._discovered = dict(found)

    def __call__(self) -> tuple[str, ...]:
        return merge_workers(self.configured, self._discovered)

    def listing(self) -> list[Worker]:
        """The merged list with where each worker came from."""
        return [Worker(endpoint, "" if endpoint in self.configured
                       else self._discovered.get(endpoint, ""))
                for endpoint in self()]
