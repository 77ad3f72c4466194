"""What the guard needs to know about this machine: its addresses, names, owner and tailnet mode.

Refreshed from tailscaled's status and the interface list at most every ``REFRESH_SECONDS``, so a
tailnet that comes up (or changes its name) after the server started is noticed without a restart.
When tailscaled cannot be asked, the last good view stays.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field

from homeport.net.addresses import IPAddress, local_addresses
from homeport.net.localapi import LocalAPI, LocalAPIError, Status

log = logging.getLogger(__name__)

REFRESH_SECONDS = 30.0


@dataclass(frozen=True)
class MachineView:
    addresses: frozenset[IPAddress] = frozenset()
    names: frozenset[str] = frozenset()
    owner_user_id: int | None = None
    # tailscaled runs in userspace-networking mode: tailnet peers arrive from 127.0.0.1.
    userspace: bool = False
    tailnet_addresses: tuple[IPAddress, ...] = ()
    status_error: str = ""

    def is_own_address(self, address: IPAddress) -> bool:
        # 0.0.0.0 and :: mean "this host" to a client that dials them.
        return address.is_loopback or address.is_unspecified or address in self.addresses


def machine_names() -> set[str]:
    hostname = socket.gethostname().lower().rstrip(".")
    return {"localhost", hostname, hostname.split(".")[0]}


def view_from(status: Status | None) -> MachineView:
    names = machine_names()
    addresses = set(local_addresses())
    tailnet: tuple[IPAddress, ...] = ()
    owner: int | None = None
    userspace = False
    if status is not None and status.running and status.Self is not None:
        names.update(status.dns_names)
        tailnet = status.tailnet_addresses
        addresses.update(tailnet)
        # A tagged server has no owner: its UserID is the shared "tagged-devices" user.
        owner = None if status.Self.Tags else (status.Self.UserID or None)
        userspace = status.userspace
    return MachineView(frozenset(addresses), frozenset(names), owner, userspace, tailnet)


@dataclass
class MachineWatcher:
    """Keeps a ``MachineView`` fresh; ``current()`` is cheap between refreshes."""

    localapi: LocalAPI
    view: MachineView = field(default_factory=lambda: view_from(None))
    _checked: float = float("-inf")
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def current(self) -> MachineView:
        if time.monotonic() - self._checked < REFRESH_SECONDS:
            return self.view
        async with self._lock:
            if time.monotonic() - self._checked >= REFRESH_SECONDS:
                await self.refresh()
        return self.view

    async def refresh(self) -> None:
        self._checked = time.monotonic()
        try:
            status = await self.localapi.status()
        except LocalAPIError as exc:
            if self.view.status_error != exc.message:
                log.info("tailscaled status unavailable: %s", exc.message)
            # Keep what was learnt before; tailscaled restarting is no reason to forget the owner.
            self.view = MachineView(
                frozenset(local_addresses()) | frozenset(self.view.tailnet_addresses),
                self.view.names, self.view.owner_user_id, self.view.userspace,
                self.view.tailnet_addresses, exc.message)
            return
        self.view = view_from(status)
