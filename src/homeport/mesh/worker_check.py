"""The configured RPC workers (HOMEPORT_RPC_WORKERS), probed in the background so that
``/api/homeport/nodes`` (and so ``homeport doctor``) can say whether each accepts connections now,
as the server last saw it.

At startup and then every ``interval`` seconds each configured worker that is due is probed with
``worker_probe.accepts_connection`` (a bare connect its gate expects, never reaching ggml); one
that did not accept is asked less and less often (``worker_probe.ProbeBackoff``: at most every 10
minutes), so a worker whose gate refuses this node does not log a refusal every look. A worker
that starts accepting is seen within about 11 minutes, or at once when asked (``recheck``: ``homeport
doctor`` asks, so that it never reports a worker down that was started since). Loads do not wait for
this: they use every configured worker, and one that fails is placed without (``engine.devices``).
"""

from __future__ import annotations

import asyncio
import logging

from homeport.engine.worker_list import WorkerList
from homeport.humanize import format_duration
from homeport.mesh.periodic import Periodic
from homeport.mesh.worker_probe import (
    RETRY_CAP,
    WORKER_CONNECT_TIMEOUT,
    WORKER_SETTLE,
    ProbeBackoff,
    accepts_connection,
)

log = logging.getLogger(__name__)


class ConfiguredWorkerCheck(Periodic):
    """Probes ``workers.configured`` now and every ``interval`` seconds until closed, and records
    each probe in ``workers`` (``WorkerList.saw``)."""

    def __init__(self, workers: WorkerList, interval: float,
                 connect_timeout: float = WORKER_CONNECT_TIMEOUT,
                 settle: float = WORKER_SETTLE) -> None:
        super().__init__(interval)
        self.workers = workers
        self.connect_timeout = connect_timeout
        self.settle = settle
        self.backoff = ProbeBackoff(interval)

    async def look(self) -> None:
        await self.check()

    async def check(self) -> None:
        """One look: probe the workers that are due, and say when one starts or stops
        accepting."""
        await self._probe([endpoint for endpoint in self.workers.configured
                           if self.backoff.due(endpoint)])

    async def recheck(self) -> None:
        """Probe now, whatever the backoff, every configured worker not seen accepting at its
        last probe (one that accepts is probed at every look anyway); a few seconds at most."""
        await self._probe([endpoint for endpoint in self.workers.configured
                           if not self._accepting(endpoint)])

    def _accepting(self, endpoint: str) -> bool:
        seen = self.workers.seen(endpoint)
        return seen is not None and seen.accepting

    async def _probe(self, endpoints: list[str]) -> None:
        answers = await asyncio.gather(*(
            accepts_connection(endpoint, self.connect_timeout, self.settle)
            for endpoint in endpoints))
        for endpoint, up in zip(endpoints, answers, strict=True):
            before = self.workers.seen(endpoint)
            self.backoff.record(endpoint, up)
            self.workers.saw(endpoint, up)
            if up and before is not None and not before.accepting:
                log.info("RPC worker %s (configured) accepts connections again", endpoint)
            elif not up and (before is None or before.accepting):
                log.warning("RPC worker %s (configured) does not accept connections: nothing "
                            "listens there, or its policy refuses this node; loads go without "
                            "it (asked again less and less often, at least every %s)",
                            endpoint, format_duration(RETRY_CAP))
