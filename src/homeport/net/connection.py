"""One TCP connection: its whois memo, how long it may take to send headers, and how many one peer
may hold open.

ASGI has no connection object, but uvicorn creates one protocol instance per connection and puts a
shallow copy of its ``app_state`` into every request's ``scope["state"]``. Giving each protocol
instance its own memo in that state makes the memo per connection: it is gone when the connection
is, so an ``ip:port`` that tailscaled later hands to another node never inherits an old answer.

uvicorn closes a kept-alive connection that stays idle (``timeout_keep_alive``) but has no clock for
a request's headers: a peer that connects and sends nothing, or trickles a header a byte at a time,
would hold a socket forever. The protocol here closes a connection whose headers have not all
arrived within ``header_timeout`` of its first byte (of the connection, for its first request), and
closes at once a connection that would give one peer address more than ``max_per_peer``. Neither
touches a request that is being answered, however long its stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from homeport.net.localapi import WhoIs

log = logging.getLogger(__name__)

MEMO_KEY = "homeport.connection"
MAX_ENTRIES = 64  # a proxy's connection carries many users; bound what one connection holds
REFUSAL_LOG_INTERVAL = 60.0  # a flood of refused connections logs one line a minute, not each


@dataclass
class ConnectionMemo:
    whois: dict[str, WhoIs | None] = field(default_factory=dict)

    def remember(self, address: str, answer: WhoIs | None) -> None:
        if len(self.whois) >= MAX_ENTRIES:
            self.whois.pop(next(iter(self.whois)))
        self.whois[address] = answer


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    max_per_peer: int = 128


class HomeportH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a per-connection memo, a header timeout and a per-peer cap."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    _last_refusal_logged: ClassVar[float] = -REFUSAL_LOG_INTERVAL

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, {**app_state, MEMO_KEY: ConnectionMemo()}, _loop)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self._peer_connections() > self.limits.max_per_peer:
            self._log_refusal()
            transport.close()
            return
        self._start_header_clock()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Still waiting for a request's headers: the clock started at the connection or at the
        # first byte after an idle keep-alive wait, and trickled bytes do not restart it.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._start_header_clock()
        else:
            self._stop_header_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_clock()
        super().connection_lost(exc)

    def _start_header_clock(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.limits.header_timeout,
                                                      self._headers_too_slow)

    def _stop_header_clock(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()  # as Go's ReadHeaderTimeout: no answer, the socket just closes

    def _peer_connections(self) -> int:
        """Open connections from this one's peer address, this one included (a linear count:
        the connections are bounded by the process's file descriptors)."""
        if self.client is None:
            return 0
        peer = self.client[0]
        return sum(1 for other in self.connections
                   if isinstance(other, H11Protocol) and other.client is not None
                   and other.client[0] == peer)

    def _log_refusal(self) -> None:
        now = time.monotonic()
        if now - HomeportH11Protocol._last_refusal_logged >= REFUSAL_LOG_INTERVAL:
            HomeportH11Protocol._last_refusal_logged = now
            log.warning("refusing connections from %s: it already holds %d (raise "
                        "HOMEPORT_MAX_CONNECTIONS_PER_PEER if that is expected)",
                        self.client[0] if self.client else "?", self.limits.max_per_peer)


def h11_protocol(limits: ConnectionLimits) -> type[HomeportH11Protocol]:
    """The protocol class for uvicorn's ``http=``, which it instantiates once per connection."""
    chosen = limits

    class LimitedH11Protocol(HomeportH11Protocol):
        limits = chosen

    return LimitedH11Protocol


def memo_of(scope: MutableMapping[str, Any]) -> ConnectionMemo | None:
    state = scope.get("state")
    memo = state.get(MEMO_KEY) if isinstance(state, dict) else None
    return memo if isinstance(memo, ConnectionMemo) else None
