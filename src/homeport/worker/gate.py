"""The worker's front door: a TCP gate that lets a connection reach ggml's RPC server only when the
worker's policy allows the node that opened it.

ggml's RPC protocol has no authentication: whoever reaches the server can read and write its memory
through tensors. So the RPC servers listen on loopback (``slots``) and this gate listens on the
worker's address. For each connection, before reading a byte from it, tailscaled says who the peer
is (whois of its full ip:port) and the policy decides, as it does for the model server: the machine
itself, the owner's devices, ``[[allow]]`` rules, a capability grant; tagged nodes only by their
tags. A refused connection is closed having sent and forwarded nothing; the first refusal of a
peer is logged, the same one again at most every 10 minutes (``refusals``). An admitted one is
joined to an idle RPC server once its first byte arrives (a bare connect, such as the server's
check that the worker is up, never reaches ggml), then bytes are copied both ways until either
side closes.
One peer holds at most ``per_peer`` connections at once (``--max-connections-per-peer``): the next
is closed as soon as it is admitted, so a runaway or hostile peer cannot take every slot and all
the gate's memory. Accepted connections get TCP keepalive (``net.keepalive``): a server that
vanishes without closing frees its slot within about 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass

from homeport.errors import ForbiddenError
from homeport.net import keepalive
from homeport.net.addresses import format_host_port, parse_ip
from homeport.net.localapi import LocalAPI, LocalAPIError
from homeport.net.machine import MachineWatcher
from homeport.net.policy import Policy
from homeport.worker.refusals import RefusalLog
from homeport.worker.slots import LOOPBACK, Slots

log = logging.getLogger(__name__)

FIRST_BYTE_TIMEOUT = 30.0  # an admitted connection that says nothing is closed after this
SLOT_WAIT = 10.0  # seconds an admitted connection waits for an idle RPC server
CHUNK = 1 << 20


@dataclass(frozen=True)
class Admission:
    allowed: bool
    who: str
    reason: str = ""
    peer: str = ""  # who it is for the refusal log: its node, or its address without the port


class WorkerGate:
    """Admits connections by policy and joins them to ggml's RPC servers; see the module doc."""

    def __init__(self, policy: Policy, localapi: LocalAPI, slots: Slots, per_peer: int) -> None:
        self.policy = policy
        self.localapi = localapi
        self.machine = MachineWatcher(localapi)
        self.slots = slots
        self.per_peer = per_peer
        self._connections: set[asyncio.Task[None]] = set()
        self._held: Counter[str] = Counter()  # admitted connections open now, by peer
        self.refusals = RefusalLog()

    async def admit(self, host: str, port: int) -> Admission:
        """Whether the peer at ``host:port`` may use this worker."""
        peer = parse_ip(host)
        if peer is None:
            return Admission(False, host, "its address could not be read", host)
        view = await self.machine.current()
        # In userspace networking, tailscaled hands tailnet peers over from 127.0.0.1: only whois
        # tells them from this machine's own processes.
        if view.is_own_address(peer) and not (peer.is_loopback and view.userspace):
            return Admission(True, "this machine")
        address = format_host_port(peer, port)
        try:
            whois = await self.localapi.whois(address)
        except LocalAPIError as exc:
            if exc.unreachable and peer.is_loopback:
                return Admission(True, "this machine")
            return Admission(False, address, f"tailscaled could not say who it is ({exc.message})",
                             str(peer))
        if whois is None:
            if peer.is_loopback:
                return Admission(True, "this machine")  # not a peer tailscaled handed over
            return Admission(False, address, "it is not on this tailnet", str(peer))
        who = f"{whois.node_name} ({','.join(whois.tags) or whois.UserProfile.LoginName})"
        try:
            self.policy.grant_for(whois, view.owner_user_id)
        except ForbiddenError as exc:
            return Admission(False, who, exc.message, who)
        return Admission(True, who)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            if task is not None:
                self._connections.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        sock = writer.get_extra_info("socket")
        if sock is not None:
            keepalive.enable(sock)
        admission = await self.admit(str(peer[0]), int(peer[1]))
        if not admission.allowed:
            unsaid = self.refusals.note(admission.peer, admission.reason, time.monotonic())
            if unsaid is not None:
                log.warning("refused a connection from %s: %s%s", admission.who, admission.reason,
                            f" (and {unsaid} more since the last such line)" if unsaid else "")
            return
        # By who the peer is, not its address: in userspace networking every peer comes from
        # 127.0.0.1, and one node may come from both of its tailnet addresses.
        if self._held[admission.who] >= self.per_peer:
            log.warning("refused a connection from %s: it holds %d already, the most one peer may "
                        "(--max-connections-per-peer)", admission.who, self.per_peer)
            return
        self._held[admission.who] += 1
        try:
            await self._forward(reader, writer, admission)
        finally:
            self._held[admission.who] -= 1
            if not self._held[admission.who]:
                del self._held[admission.who]

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       admission: Admission) -> None:
        """Join an admitted connection to an idle RPC server once it says something."""
        try:
            first = await asyncio.wait_for(reader.read(CHUNK), timeout=FIRST_BYTE_TIMEOUT)
        except TimeoutError:
            return
        if not first:
            return  # connected and left: someone checking that the worker is up
        port = await self.slots.take(SLOT_WAIT)
        if port is None:
            log.warning("refused a connection from %s: all %d RPC slots stayed in use (start "
                        "the worker with more --slots)", admission.who, self.slots.count)
            return
        log.info("serving %s", admission.who)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(LOOPBACK, port)
        except OSError:
            self.slots.give_back(port)
            raise
        try:
            upstream_writer.write(first)
            await _join(reader, writer, upstream_reader, upstream_writer)
        finally:
            upstream_writer.close()
            with contextlib.suppress(OSError):
                await upstream_writer.wait_closed()
            self.slots.give_back(port)
            log.info("%s disconnected", admission.who)

    async def close(self) -> None:
        for task in list(self._connections):
            task.cancel()
        await self.localapi.aclose()


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """One direction, until its end: then the other side hears that end (a half-close)."""
    while True:
        data = await source.read(CHUNK)
        if not data:
            break
        sink.write(data)
        await sink.drain()
    if sink.can_write_eof():
        sink.write_eof()


async def _join(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                server_reader: asyncio.StreamReader, server_writer: asyncio.StreamWriter) -> None:
    """Copy both ways until both sides have ended, or either fails; then both are done."""
    tasks = [asyncio.create_task(_copy(client_reader, server_writer)),
             asyncio.create_task(_copy(server_reader, client_writer))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
