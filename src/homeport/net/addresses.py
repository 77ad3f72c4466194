"""Addresses: which ones belong to a tailnet, to this machine, and to its tailscale interface.

A tailnet address (100.64.0.0/10 without ChromeOS's 100.115.92.0/23, or fd7a:115c:a1e0::/48) proves
nothing alone: carrier-grade NAT and other VPNs use the same range. Only tailscaled's whois says who a
peer is; these helpers decide where to bind and which peers are this machine itself.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

import psutil

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

TAILNET_V4 = ipaddress.ip_network("100.64.0.0/10")
CHROMEOS_V4 = ipaddress.ip_network("100.115.92.0/23")
TAILNET_V6 = ipaddress.ip_network("fd7a:115c:a1e0::/48")
# Tailscale's own DNS resolver: an address in the range that is never a peer.
SERVICE_ADDRESSES = frozenset({ipaddress.ip_address("100.100.100.100"),
                               ipaddress.ip_address("fd7a:115c:a1e0::53")})


def parse_ip(text: str) -> IPAddress | None:
    """An address from text such as ``100.1.2.3``, ``[fd7a::1]`` or ``100.1.2.3/32``; None if not one.

    IPv4-mapped IPv6 (``::ffff:1.2.3.4``, what a dual-stack socket reports) becomes plain IPv4.
    """
    try:
        address = ipaddress.ip_address(text.strip().strip("[]").split("/")[0].split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_tailnet_ip(address: IPAddress) -> bool:
    if address in SERVICE_ADDRESSES:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return address in TAILNET_V4 and address not in CHROMEOS_V4
    return address in TAILNET_V6


def interface_addresses(name: str) -> list[IPAddress]:
    """The tailnet addresses on interface ``name`` (empty when it does not exist or has none)."""
    found = []
    for entry in psutil.net_if_addrs().get(name, []):
        if entry.family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = parse_ip(entry.address)
        if address is not None and is_tailnet_ip(address):
            found.append(address)
    return found


def local_addresses() -> set[IPAddress]:
    """Every address on this machine's interfaces: a peer using one of them is the machine itself."""
    found: set[IPAddress] = set()
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                address = parse_ip(entry.address)
                if address is not None:
                    found.add(address)
    return found


def format_host_port(address: IPAddress | str, port: int) -> str:
    text = str(address)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def unique(addresses: Iterable[IPAddress]) -> list[IPAddress]:
    """Addresses in their first order, without repeats."""
    return list(dict.fromkeys(addresses))
