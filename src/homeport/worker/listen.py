"""Where the worker's gate listens: this machine's tailnet address, or loopback; nothing wider.

A worker hands out memory and compute to whoever its gate admits, so it never listens where a
stranger could even try: 0.0.0.0, ::, LAN and public addresses are refused. The default is this
machine's tailnet IPv4 address as tailscaled reports it (loopback in userspace networking, where
tailscaled forwards tailnet connections there), port 50052 as ggml's rpc-server. IPv4 only: ggml's
RPC client dials IPv4 (its transport opens AF_INET sockets).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from homeport import config
from homeport.errors import ConfigError
from homeport.net.binding import TailnetSight, look_for_tailnet

DEFAULT_PORT = config.WORKER_PORT


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int
    audience: str  # who can reach it, for the banner

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


def _tailnet() -> TailnetSight:
    return look_for_tailnet(config.tailscaled_socket(), config.TAILSCALE_INTERFACE.get())


def _split(text: str) -> tuple[str, int]:
    host, colon, port_text = text.strip().rpartition(":")
    if not colon:
        host, port_text = port_text, str(DEFAULT_PORT)
    if host.lower() == "localhost":
        host = "127.0.0.1"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"--listen wants HOST:PORT with a port from 1 to 65535, not "
                          f"{text.strip()[:100]!r}")
    return host, int(port_text)


def listen_address(text: str | None, sight: TailnetSight | None = None) -> ListenAddress:
    """The gate's address from ``--listen`` (or the default); ConfigError says why not."""
    if not text:
        sight = sight or _tailnet()
        if sight.userspace:
            return ListenAddress("127.0.0.1", DEFAULT_PORT,
                                 "this machine, and the tailnet through tailscaled (userspace "
                                 "networking forwards it to loopback)")
        ipv4 = [address for address in sight.addresses if address.version == 4]
        if not ipv4:
            raise ConfigError(f"no tailnet address to listen on ({sight.reason or 'none yet'}); "
                              "is tailscaled up? For this machine alone use --listen "
                              f"127.0.0.1:{DEFAULT_PORT}")
        return ListenAddress(str(ipv4[0]), DEFAULT_PORT, "nodes of your tailnet the policy allows")
    host, port = _split(text)
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ConfigError(f"--listen wants an IPv4 address (this machine's tailnet address or "
                          f"127.0.0.1), not {host[:100]!r}") from None
    if address.version != 4:
        raise ConfigError("--listen wants an IPv4 address: ggml's RPC client cannot dial IPv6")
    if address.is_unspecified:
        raise ConfigError(f"refusing to listen on {host}: ggml's RPC has no authentication, and "
                          "every network this machine is on could reach it; use this machine's "
                          "tailnet address (the default)")
    if address.is_loopback:
        return ListenAddress(str(address), port, "only this machine (loopback)")
    sight = sight or _tailnet()
    if address not in sight.addresses:
        raise ConfigError(f"refusing to listen on {host}: it is not this machine's tailnet "
                          "address (a LAN or public address would let anyone on that network "
                          "try ggml's unauthenticated RPC); use the tailnet address or 127.0.0.1")
    return ListenAddress(str(address), port, "nodes of your tailnet the policy allows")
