"""Test hosts in network namespaces, wired to this host by veth pairs.

``Lab`` builds: a bridge on this host holding the server's "tailnet" addresses (100.80.N.1 and
fd7a:115c:a1e0:N::1), tailnet peers on it (100.80.N.2, .3, ...), and a "LAN stranger" on its own
link in the benchmarking range 198.18.0.0/15 (198.18.N.2, host side 198.18.N.1). Every name carries
this process's id, so parallel runs do not collide; ``close`` removes every namespace and link, and
runs even when a test failed. ``run`` executes a command inside a peer's namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class LabUnavailable(Exception):
    """Namespaces cannot be made here (not root, no iproute2, or no permission)."""


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass
class Peer:
    name: str
    namespace: str
    ipv4: str
    ipv6: str = ""


@dataclass
class Lab:
    tag: str = field(default_factory=lambda: f"{os.getpid() % 10000:04d}{uuid.uuid4().hex[:2]}")
    subnet: int = field(default_factory=lambda: 1 + os.getpid() % 250)
    peers: dict[str, Peer] = field(default_factory=dict)
    _namespaces: list[str] = field(default_factory=list)
    _links: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"hp{self.tag}br"

    @property
    def server_ipv4(self) -> str:
        return f"100.80.{self.subnet}.1"

    @property
    def server_ipv6(self) -> str:
        return f"fd7a:115c:a1e0:{self.subnet:x}::1"

    @property
    def lan_host_ipv4(self) -> str:
        return f"198.18.{self.subnet}.1"

    def open(self) -> Lab:
        if os.geteuid() != 0:
            raise LabUnavailable("network namespaces need root (run the tests as root, as CI does)")
        if shutil.which("ip") is None:
            raise LabUnavailable("the `ip` command (iproute2) is missing")
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
        except RuntimeError as exc:
            raise LabUnavailable(f"cannot create network links here: {exc}") from None
        self._links.append(self.bridge)
        _ip("addr", "add", f"{self.server_ipv4}/24", "dev", self.bridge)
        _ip("-6", "addr", "add", f"{self.server_ipv6}/64", "dev", self.bridge, "nodad")
        _ip("link", "set", self.bridge, "up")
        return self

    def _namespace(self, name: str) -> str:
        namespace = f"hp{self.tag}-{name}"
        _ip("netns", "add", namespace)
        self._namespaces.append(namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")
        return namespace

    def _veth(self, name: str, namespace: str) -> tuple[str, str]:
        outside, inside = f"hp{self.tag}{name[:2]}o", f"hp{self.tag}{name[:2]}i"
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", namespace)
        self._links.append(outside)
        _ip("-n", namespace, "link", "set", inside, "up")
        return outside, inside

    def add_tailnet_peer(self, name: str) -> Peer:
        """A peer on the bridge, with the next 100.80.N.x and fd7a:…:N::x addresses."""
        number = 2 + sum(1 for peer in self.peers.values() if peer.ipv4.startswith("100."))
        namespace = self._namespace(name)
        outside, inside = self._veth(name, namespace)
        _ip("link", "set", outside, "master", self.bridge, "up")
        ipv4 = f"100.80.{self.subnet}.{number}"
        ipv6 = f"fd7a:115c:a1e0:{self.subnet:x}::{number}"
        _ip("-n", namespace, "addr", "add", f"{ipv4}/24", "dev", inside)
        _ip("-n", namespace, "-6", "addr", "add", f"{ipv6}/64", "dev", inside, "nodad")
        peer = Peer(name, namespace, ipv4, ipv6)
        self.peers[name] = peer
        return peer

    def add_lan_stranger(self, name: str = "stranger") -> Peer:
        """A host on its own link; its default route points at this host, so it can also try to
        reach the tailnet addresses (Linux accepts packets for any local address on any link)."""
        namespace = self._namespace(name)
        outside, inside = self._veth(name, namespace)
        _ip("addr", "add", f"{self.lan_host_ipv4}/24", "dev", outside)
        _ip("link", "set", outside, "up")
        ipv4 = f"198.18.{self.subnet}.2"
        _ip("-n", namespace, "addr", "add", f"{ipv4}/24", "dev", inside)
        _ip("-n", namespace, "route", "add", "default", "via", self.lan_host_ipv4)
        peer = Peer(name, namespace, ipv4)
        self.peers[name] = peer
        return peer

    def set_link(self, peer: Peer, up: bool) -> None:
        """Bring this host's end of a peer's link down (packets either way are lost, and neither
        side hears a thing: a cable pulled) or back up."""
        _ip("link", "set", f"hp{self.tag}{peer.name[:2]}o", "up" if up else "down")

    def run(self, peer: Peer, argv: Sequence[str], timeout: float = 120,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the peer's namespace, capturing its output."""
        return subprocess.run(["ip", "netns", "exec", peer.namespace, *argv],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})

    def close(self) -> None:
        for namespace in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
        for link in reversed(self._links):
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=30)
        self._namespaces.clear()
        self._links.clear()

    def leftovers(self) -> list[str]:
        """Namespaces or links of this lab still present (for the cleanup test)."""
        names = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return [line for line in (names + spaces).splitlines() if f"hp{self.tag}" in line]
