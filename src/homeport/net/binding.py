"""Where the server listens, and the one sentence that says who can reach it.

Loopback by default. ``--tailnet`` binds this machine's tailnet addresses (from tailscaled's status,
else the tailscale interface) plus loopback, waiting for the tailnet when started at boot; in
userspace-networking mode tailscaled forwards tailnet connections to loopback, so loopback is all.
Anything wider (0.0.0.0, a LAN or public address, a host name) is refused unless authentication is
configured (a policy file or a token) and ``--expose`` says the owner means it.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from homeport import config
from homeport.endpoints import HostAddress, is_loopback_host
from homeport.errors import ConfigError
from homeport.net.addresses import IPAddress, format_host_port, interface_addresses, parse_ip, unique
from homeport.net.localapi import LocalAPIError, read_status
from homeport.net.policy import Policy, describe

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class TailnetSight:
    """This machine's tailnet addresses as far as they can be seen now, or why none are."""

    addresses: tuple[IPAddress, ...] = ()
    userspace: bool = False
    reason: str = ""


def look_for_tailnet(socket_path: Path, interface: str) -> TailnetSight:
    reason = ""
    try:
        status = read_status(socket_path)
    except LocalAPIError as exc:
        reason = exc.message
    else:
        addresses = status.tailnet_addresses
        if addresses:
            return TailnetSight(addresses, userspace=status.userspace)
        reason = f"tailscaled is {status.BackendState or 'not running'}"
    return TailnetSight(tuple(interface_addresses(interface)), reason=reason)


@dataclass
class Binding:
    """Listening sockets, and who can reach them (said in the startup banner)."""

    sockets: list[socket.socket]
    audience: str
    shown: list[str] = field(default_factory=list)
    unix_path: Path | None = None

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self.unix_path is not None:
            self.unix_path.unlink(missing_ok=True)


def open_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it a keep-alive client waits ~40 ms (Nagle and delayed ACK) on every response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host not in ("::", ""):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def open_unix(path: Path) -> socket.socket:
    """The socket `tailscale serve` forwards to; only this user (and root) may connect."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o600)
    return sock


def _bind_all(hosts: list[str], port: int) -> list[socket.socket]:
    opened: list[socket.socket] = []
    try:
        for host in hosts:
            opened.append(open_tcp(host, port))
    except OSError:
        for sock in opened:
            sock.close()
        raise
    return opened


def bind_tailnet(port: int, socket_path: Path, interface: str, wait_seconds: float, who: str,
                 sleep: Callable[[float], None] = time.sleep) -> Binding:
    """Bind loopback and the tailnet addresses, waiting (0: for ever) until they can be bound."""
    deadline = time.monotonic() + wait_seconds if wait_seconds > 0 else None
    announced = ""
    while True:
        sight = look_for_tailnet(socket_path, interface)
        problem = sight.reason or "no tailnet address yet"
        if sight.addresses:
            hosts = [LOOPBACK] if sight.userspace else [LOOPBACK, *map(str, unique(sight.addresses))]
            try:
                sockets = _bind_all(hosts, port)
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise ConfigError(f"cannot listen on port {port}: {exc.strerror}") from None
                problem = "the tailnet addresses are not on an interface yet"
            else:
                shown = [format_host_port(address, port) for address in sight.addresses]
                where = (f"tailscaled (userspace networking) forwards {', '.join(shown)} to "
                         "loopback" if sight.userspace else f"at {', '.join(shown)}")
                return Binding(sockets, f"this machine and, over your tailnet {where}, {who}",
                               [format_host_port(host, port) for host in hosts])
        if deadline is not None and time.monotonic() >= deadline:
            raise ConfigError(f"the tailnet did not come up within {wait_seconds:g}s ({problem}); "
                              "is tailscaled running and logged in (`tailscale up`)?")
        if problem != announced:
            log.warning("waiting for the tailnet to come up: %s", problem)
            announced = problem
        sleep(POLL_SECONDS)


def bind_address(address: HostAddress, *, expose: bool, authenticated: bool, tailnet: TailnetSight,
                 who: str) -> Binding:
    """Bind one address: loopback or a tailnet address of ours freely, anything else only exposed."""
    host, port = address.host, address.port
    ip = parse_ip(host)
    own_tailnet = ip is not None and ip in tailnet.addresses
    where = format_host_port(host, port)
    if not (is_loopback_host(host) or own_tailnet):
        if not expose:
            raise ConfigError(
                f"refusing to listen on {where}: anyone who can reach that address could use your "
                "models (scans find hundreds of thousands of open Ollama servers). Use "
                "`homeport serve --tailnet` to serve your tailnet only; or, to serve other "
                "machines, create a token (`homeport token create NAME`) and add --expose")
        if not authenticated:
            raise ConfigError(
                f"--expose needs authentication first: create a token (`homeport token create "
                f"NAME`) or write a policy file (HOMEPORT_POLICY) before exposing {where}")
    try:
        sockets = [open_tcp(host, port)]
    except OSError as exc:
        raise ConfigError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    if is_loopback_host(host):
        return Binding(sockets, "only this machine (loopback)", [where])
    if own_tailnet:
        return Binding(sockets, f"this machine's tailnet address {where}: {who}", [where])
    return Binding(sockets, f"EXPOSED beyond the tailnet on {where}: callers must send a token, "
                            f"or be {who}", [where])


def who_may_connect(policy: Policy, tokens: int) -> str:
    """The identities a policy and the token file let in, for the banner."""
    who = describe(policy)
    if tokens:
        who += f", and {tokens} token holder{'s' if tokens != 1 else ''}"
    return who


def bind(address: HostAddress, *, tailnet: bool, expose: bool, policy: Policy,
         tokens: int) -> Binding:
    """The listening sockets for ``serve``, from the settings; ConfigError says why not."""
    who = who_may_connect(policy, tokens)
    if tailnet:
        binding = bind_tailnet(address.port, config.tailscaled_socket(),
                               config.TAILSCALE_INTERFACE.get(), config.TAILNET_WAIT.get(), who)
    else:
        sight = TailnetSight()
        if not is_loopback_host(address.host):
            sight = look_for_tailnet(config.tailscaled_socket(), config.TAILSCALE_INTERFACE.get())
        binding = bind_address(address, expose=expose,
                               authenticated=policy.has_file or tokens > 0, tailnet=sight,
                               who=who)
    if policy.proxy is not None and policy.proxy.startswith("unix:"):
        path = Path(policy.proxy[5:])
        try:
            binding.sockets.append(open_unix(path))
        except OSError as exc:
            binding.close()
            raise ConfigError(f"cannot listen on the [serve] proxy socket {path}: "
                              f"{exc.strerror or exc}") from None
        binding.unix_path = path
        binding.shown.append(f"unix:{path} (for tailscale serve)")
    return binding
