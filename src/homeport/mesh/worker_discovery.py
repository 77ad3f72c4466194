"""Tailnet peers as RPC workers (``serve --tailnet``): every online peer of this tailnet that
accepts a TCP connection on the worker port (50052, ``homeport worker``'s default) is a worker that
models may be placed on, after those configured in HOMEPORT_RPC_WORKERS.

A background task reads tailscaled's status now and then and tries a connection to each peer's
IPv4 address (ggml's RPC client dials IPv4 only), closing it without sending anything: the
worker's gate forwards nothing to ggml until a first byte, so a bare connect is the liveness check
it expects. The connection is held open a moment first: a gate whose policy refuses this node
closes it at once (after whois), one that admits it waits for the first byte, so a worker that
would refuse every load is not taken. Peers that left, went offline or stopped accepting are
dropped. The found endpoints feed
a ``WorkerList`` that the model manager reads at its next load; nothing here runs on a request's
path. The same peers as ``discovery.tailnet_peers`` are considered (this tailnet's, not shared in,
not this node).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from homeport import config
from homeport.engine.worker_list import WorkerList
from homeport.mesh.discovery import TailnetLook, tailnet_peer_addresses
from homeport.net.localapi import LocalAPI, Status

log = logging.getLogger(__name__)

WORKER_CONNECT_TIMEOUT = 1.0  # seconds: a tailnet peer that answers at all answers by then
# Seconds a connection must stay open, silent, to count: a refusing gate closes it sooner.
WORKER_SETTLE = 1.0


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

    async def discover(self) -> None:
        candidates = worker_candidates(await self.localapi.status(peers=True), self.port)
        # A worker configured by name (desktop:50052) is not taken a second time by address.
        configured = await configured_addresses(self.workers.configured)
        candidates = {endpoint: name for endpoint, name in candidates.items()
                      if endpoint not in configured}
        answers = await asyncio.gather(*(
            accepts_connection(endpoint, self.connect_timeout, self.settle)
            for endpoint in candidates))
        found = {endpoint: name for (endpoint, name), up in zip(candidates.items(), answers,
                                                                strict=True) if up}
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
