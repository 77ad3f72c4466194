"""Where a pull may send requests, beyond the registry the user named.

Two rules, each the fix for a published Ollama CVE:

* A redirect is followed to the registry's own origin, and, for blobs only, to another host whose
  every address is public. Loopback, link-local (cloud metadata at 169.254.169.254), private and
  other special addresses are refused: a registry must not steer homeport into the home network
  (CVE-2026-5530). An https registry may not redirect to plain http unless the pull is insecure.
* A Bearer token is fetched only from a realm on the registry's own host and port, so a challenge
  cannot send homeport's request (and any credentials) elsewhere (CVE-2025-51471).

The redirect rule is checked twice: on the redirect (for a clear refusal), and again where the
connection is made (``VettedBackend``), which resolves the name itself and connects to the address
it checked, so a name that answers "public" once and "loopback" the next time (DNS rebinding)
gets no connection. (Through an HTTP proxy from the environment, the proxy resolves names.)
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

import httpcore
import httpx

from homeport.errors import RegistryRefusedError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return a.scheme == b.scheme and _same_host(a, b)


def _same_host(a: httpx.URL, b: httpx.URL) -> bool:
    """The same host (in any case) and port; the schemes may differ."""
    return a.host.lower() == b.host.lower() and _port(a) == _port(b)


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def _where(url: httpx.URL) -> str:
    return f"{url.host}:{_port(url)}"


def is_public_address(address: IPAddress) -> bool:
    """True only for globally routable unicast addresses."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not (
        address.is_loopback or address.is_link_local or address.is_private
        or address.is_multicast or address.is_reserved or address.is_unspecified)


async def host_addresses(host: str) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal is its own single address)."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise RegistryRefusedError(
            f"refused a redirect to {host}: the name does not resolve ({exc.strerror})") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def check_scheme(origin: httpx.URL, target: httpx.URL, insecure: bool) -> None:
    if target.scheme not in ("http", "https"):
        raise RegistryRefusedError(f"refused a redirect to a {target.scheme!r} URL")
    if target.scheme == "http" and origin.scheme == "https" and not insecure:
        raise RegistryRefusedError(
            f"refused a redirect from https to plain http at {_where(target)}")


async def check_redirect(origin: httpx.URL, target: httpx.URL, *, insecure: bool,
                         other_hosts: bool) -> None:
    """Raise RegistryRefusedError unless a redirect from ``origin`` to ``target`` is safe."""
    check_scheme(origin, target, insecure)
    if _same_host(target, origin):
        return
    if not other_hosts:
        raise RegistryRefusedError(
            f"refused a redirect to another host ({_where(target)}) for a manifest")
    for address in await host_addresses(target.host):
        if not is_public_address(address):
            raise RegistryRefusedError(
                f"refused a redirect to {_where(target)}: {address} is a loopback, link-local "
                "or private address, and only the registry itself may be there")


def check_realm(registry: httpx.URL, realm: str, insecure: bool) -> httpx.URL:
    """The token URL of a Bearer challenge, if it is on the registry's own host and port."""
    try:
        url = httpx.URL(realm)
    except (httpx.InvalidURL, TypeError):
        raise RegistryRefusedError("the registry's auth challenge has an invalid realm") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise RegistryRefusedError("the registry's auth challenge has an invalid realm")
    if not _same_host(url, registry):
        raise RegistryRefusedError(
            f"refused to fetch a token from {_where(url)}: the auth realm must be on the "
            f"registry's own host ({_where(registry)})")
    if url.scheme == "http" and not insecure:
        raise RegistryRefusedError("refused to fetch a token over plain http; pull with insecure")
    return url


class VettedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's connections for one registry: to its own host and port, as resolved; to any
    other host, only to one of its addresses, all of which must be public."""

    def __init__(self, registry: httpx.URL) -> None:
        self._registry = (registry.host.lower(), _port(registry))
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        if (host.lower(), port) == self._registry:
            return await self._inner.connect_tcp(host, port, timeout, local_address,
                                                 socket_options)
        addresses = await host_addresses(host)
        for address in addresses:
            if not is_public_address(address):
                raise RegistryRefusedError(
                    f"refused to connect to {host}:{port}: it now resolves to {address}, a "
                    "loopback, link-local or private address")
        failure: Exception = httpcore.ConnectError(f"{host} has no address")
        for address in addresses:  # the checked addresses themselves, never the name again
            try:
                return await self._inner.connect_tcp(str(address), port, timeout, local_address,
                                                     socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        raise RegistryRefusedError("a pull never connects to a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def vetted_transport(registry: httpx.URL, limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's transport whose every connection goes through ``VettedBackend``."""
    transport = httpx.AsyncHTTPTransport(limits=limits)
    # httpx has no parameter for the network backend, while httpcore's pool has a public one:
    # the transport gets a pool built the same way, with that backend.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(), max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry, network_backend=VettedBackend(registry))
    return transport
