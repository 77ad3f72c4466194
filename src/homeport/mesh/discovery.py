"""Tailnet peers as upstreams (``serve --tailnet``): every online peer of this tailnet that answers
as homeport or Ollama on port 11434 is routed to like a configured upstream.

A background task reads tailscaled's status (peers included) now and then, asks each new peer's
``/api/version`` with short timeouts, and adds those that answer; peers that left the status or
went offline are dropped. Nodes shared in from other tailnets are not this tailnet's and are
skipped, and so is this node itself. Nothing here runs on a request's path.
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from homeport.mesh.periodic import Periodic
from homeport.mesh.upstreams import (
    NODE_ID_HEADER,
    Kind,
    Upstream,
    UpstreamConfig,
    Upstreams,
    kind_of_version,
    name_from_url,
)
from homeport.net.addresses import IPAddress, parse_ip
from homeport.net.localapi import LocalAPI, LocalAPIError, Status

log = logging.getLogger(__name__)

PEER_PORT = 11434  # where homeport and Ollama listen unless told otherwise
PEER_PROBE_TIMEOUT = httpx.Timeout(2.0, connect=1.0)


def tailnet_peer_addresses(status: Status) -> list[tuple[str, list[IPAddress]]]:
    """The name and tailnet addresses (IPv4 first) of each online peer of this tailnet: not
    shared in from another tailnet, under this tailnet's MagicDNS domain (status never lists this
    node among its peers)."""
    suffix = f".{status.MagicDNSSuffix.strip('.').lower()}." if status.MagicDNSSuffix else ""
    found: list[tuple[str, list[IPAddress]]] = []
    for peer in (status.Peer or {}).values():
        dns_name = peer.DNSName.lower()
        if not peer.Online or peer.ShareeNode or (suffix and not dns_name.endswith(suffix)):
            continue
        addresses = [address for address in map(parse_ip, peer.TailscaleIPs or []) if address]
        if addresses:
            found.append((dns_name.split(".")[0] or peer.HostName,
                          sorted(addresses, key=lambda item: item.version)))
    return found


def tailnet_peers(status: Status, port: int = PEER_PORT) -> dict[str, str]:
    """URL → name of each online peer of this tailnet (by its MagicDNS domain), at ``port``."""
    found: dict[str, str] = {}
    for name, addresses in tailnet_peer_addresses(status):
        address = addresses[0]  # IPv4 first
        host = str(address) if address.version == 4 else f"[{address}]"
        found[f"http://{host}:{port}"] = name
    return found


class TailnetLook(Periodic):
    """Looks at the tailnet now and every ``interval`` seconds, in the background, until closed
    (``discover``, in subclasses); while tailscaled does not answer, what was found stays."""

    what = "tailnet peers"  # for the log

    def __init__(self, localapi: LocalAPI, interval: float) -> None:
        super().__init__(interval)
        self.localapi = localapi

    async def close(self) -> None:
        await super().close()
        await self.localapi.aclose()

    async def look(self) -> None:
        try:
            await self.discover()
        except LocalAPIError as exc:
            log.debug("%s not looked for: %s", self.what, exc)

    async def discover(self) -> None:
        raise NotImplementedError


class PeerDiscovery(TailnetLook):
    """Keeps ``upstreams`` in step with the tailnet's peers."""

    def __init__(self, localapi: LocalAPI, upstreams: Upstreams, interval: float,
                 port: int = PEER_PORT) -> None:
        super().__init__(localapi, interval)
        self.upstreams = upstreams
        self.port = port
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=PEER_PROBE_TIMEOUT, trust_env=False)
        await super().start()

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            if self._client is not None:
                await self._client.aclose()

    async def discover(self) -> None:
        peers = tailnet_peers(await self.localapi.status(peers=True), self.port)
        for upstream in [item for item in self.upstreams.all
                         if item.discovered and item.settings.url not in peers]:
            log.info("tailnet peer %s left: no longer an upstream", upstream.name)
            self.upstreams.remove(upstream)
        known = {upstream.settings.url for upstream in self.upstreams.all}
        new = [url for url in peers if url not in known]
        kinds = await asyncio.gather(*(self._kind_of(url) for url in new))
        for url, kind in zip(new, kinds, strict=True):
            if kind is None or url in {upstream.settings.url for upstream in self.upstreams.all}:
                continue
            name = peers[url] if self.upstreams.named(peers[url]) is None else name_from_url(url)
            if self.upstreams.named(name) is not None or name == "local":
                continue
            self.upstreams.add(Upstream(settings=UpstreamConfig(name=name, url=url, kind=kind),
                                        kind=kind, discovered=True))
            log.info("tailnet peer %s answers as %s at %s: added as an upstream", name, kind, url)

    async def _kind_of(self, url: str) -> Kind | None:
        """homeport or ollama when ``url`` answers as one (and is not this node), else None."""
        assert self._client is not None
        try:
            version = await self._client.get(f"{url}/api/version")
            version.raise_for_status()
            if version.headers.get(NODE_ID_HEADER) == self.upstreams.node_id:
                return None
            return kind_of_version(version.json())
        except (httpx.HTTPError, ValueError):
            return None
