"""A memo that lives exactly as long as one TCP connection, for caching whois answers.

ASGI has no connection object, but uvicorn creates one protocol instance per connection and puts a
shallow copy of its ``app_state`` into every request's ``scope["state"]``. Giving each protocol
instance its own memo in that state makes the memo per connection: it is gone when the connection
is, so an ``ip:port`` that tailscaled later hands to another node never inherits an old answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from homeport.net.localapi import WhoIs

MEMO_KEY = "homeport.connection"
MAX_ENTRIES = 64  # a proxy's connection carries many users; bound what one connection holds


@dataclass
class ConnectionMemo:
    whois: dict[str, WhoIs | None] = field(default_factory=dict)

    def remember(self, address: str, answer: WhoIs | None) -> None:
        if len(self.whois) >= MAX_ENTRIES:
            self.whois.pop(next(iter(self.whois)))
        self.whois[address] = answer


class MemoH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with one ``ConnectionMemo`` per connection in the request scope."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, {**app_state, MEMO_KEY: ConnectionMemo()}, _loop)


def memo_of(scope: MutableMapping[str, Any]) -> ConnectionMemo | None:
    state = scope.get("state")
    memo = state.get(MEMO_KEY) if isinstance(state, dict) else None
    return memo if isinstance(memo, ConnectionMemo) else None
