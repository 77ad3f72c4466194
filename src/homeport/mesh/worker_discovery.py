"""Tailnet peers as RPC workers (``serve --tailnet``): every online peer of this tailnet that
accepts a TCP connection on the worker port (50052, ``homeport worker``'s default) is a worker that
models may be placed on, after those configured in HOMEPORT_RPC_WORKERS.

A background task reads tailscaled's status every ``interval`` seconds and probes each peer's IPv4
address (ggml's RPC client dials IPv4 only) with ``worker_probe.accepts_connection``: a bare
connect held open a moment, so a worker whose gate refuses this node is not taken. Peers that
left, went offline or stopped accepting are dropped. The found endpoints feed a ``WorkerList``
that the model manager reads at its next load; nothing here runs on a request's path. The same
peers as ``discovery.tailnet_peers`` are considered (this tailnet's, not shared in, not this node).

Quietly: a peer that did not accept (nothing listening, or a gate that refuses this node, which
logs each refusal on its side) is probed again after 1, 2, 4, ... looks, at most 10 minutes apart
(``worker_probe.ProbeBackoff``); a peer that goes offline, or leaves, starts afresh. So a worker
started on a peer that is online is found within 10 minutes' worth of looks (20 at the default
30 s: about 11 minutes with the probes' own second or two each), or at the next look when looks
are rarer than that; and at the first look after its machine comes back online (its status goes
offline then online). Restarting the server finds it at its first look.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from homeport import config
from homeport.engine.worker_list import WorkerList
from homeport.mesh.discovery import TailnetLook, tailnet_peer_addresses
from homeport.mesh.worker_probe import (
    WORKER_CONNECT_TIMEOUT,
    WORKER_SETTLE,
    ProbeBackoff,
    accepts_connection,
)
from homeport.net.localapi import LocalAPI, Status

log = logging.getLogger(__name__)


def worker_candidates(status: Status, port: int = config.WORKER_PORT) -> dict[str, str]:
    """``host:port`` → name of each online peer of this tailnet that has an IPv4 address other
    than this node's, at ``port``."""
    own = set(status.tailnet_addresses)
    found: dict[str, str] = {}
    for name, addresses in tailnet_peer_addresses(status):
        ipv4 = [address for address in addresses if address.version == 4 and address not in own]
        if ipv4:
            found.setdefault(f"{ipv4[0]}:{port}", name)
    return found


async def configured_addresses(endpoints: tuple[str, ...]) -> set[str]:
    """The IPv4 ``address:port`` each configured ``host:port`` stands for (those that resolve)."""
    loop = asyncio.get_running_loop()
    found: set[str] = set()
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        try:
            infos = await loop.getaddrinfo(host, int(port), family=socket.AF_INET,
                                           type=socket.SOCK_STREAM)
        except OSError:
            continue
        found.update(f"{info[4][0]}:{port}" for info in infos)
    return found


class WorkerDiscovery(TailnetLook):
    """Keeps ``workers.discovered`` in step with the tailnet's peers that run a worker."""

    what = "tailnet workers"

    def __init__(self, localapi: LocalAPI, workers: WorkerList, interval: float,
                 port: int = config.WORKER_PORT, connect_timeout: float = WORKER_CONNECT_TIMEOUT,
                 settle: float = WORKER_SETTLE) -> None:
        super().__init__(localapi, interval)
        self.workers = workers
        self.port = port
        self.connect_timeout = connect_timeout
        self.settle = settle
        self.found: dict[str, str] = {}  # endpoint → peer name, as of the last look
        self.backoff = ProbeBackoff(interval)

    async def discover(self) -> None:
        candidates = worker_candidates(await self.localapi.status(peers=True), self.port)
        # A worker configured by name (desktop:50052) is not taken a second time by address.
        configured = await configured_addresses(self.workers.configured)
        candidates = {endpoint: name for endpoint, name in candidates.items()
                      if endpoint not in configured}
        # A peer no longer online (or gone, or now a configured worker) starts afresh.
        self.backoff.keep(set(candidates))
        probed = [endpoint for endpoint in candidates if self.backoff.due(endpoint)]
        answers = await asyncio.gather(*(
            accepts_connection(endpoint, self.connect_timeout, self.settle)
            for endpoint in probed))
        for endpoint, up in zip(probed, answers, strict=True):
            self.backoff.record(endpoint, up)
        # A worker that accepted is probed at every look, so one not probed did not accept.
        found = {endpoint: candidates[endpoint]
                 for endpoint, up in zip(probed, answers, strict=True) if up}
        for endpoint, name in self.found.items():
            if endpoint not in found:
                log.info("tailnet worker %s at %s is gone: models are no longer placed on it",
                         name, endpoint)
        for endpoint, name in found.items():
            if endpoint not in self.found:
                log.info("tailnet peer %s runs a worker at %s: models may be placed on it",
                         name, endpoint)
        self.found = found
        self.workers.set_discovered(found)
        for endpoint in found:
            self.workers.saw(endpoint, True)
