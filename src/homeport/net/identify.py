"""Deciding who sent a request: the machine itself, a tailnet identity, a token, or nobody we know.

In order:
1. A homeport token (``Authorization: Bearer homeport_…``) names its holder, wherever they are.
   Other bearer values (OpenAI clients must send some key) are ignored for callers known otherwise.
2. A Funnel request (``Tailscale-Funnel-Request``) comes from the internet: token or nothing.
3. A request from the configured ``tailscale serve`` proxy that forwards a client: whois of
   ``X-Forwarded-For``, which the proxy's ``Tailscale-User-Login`` must agree with. In userspace
   mode a TCP loopback proxy shares 127.0.0.1 with the tailnet peers tailscaled hands over, so
   whois of the connection comes first: a peer it knows is that peer, never the proxy.
4. This machine (loopback or one of its own addresses) is the owner, unless tailscaled runs in
   userspace mode, where tailnet peers also arrive from 127.0.0.1: whois says which they are.
   A request forwarded by a proxy on this machine that the policy does not name is refused.
5. Anyone else: whois of the peer's full ip:port, answered once per connection; no answer denies.
"""

from __future__ import annotations

import email.header
import logging
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers

from homeport.errors import ForbiddenError, UnauthorizedError
from homeport.net.addresses import format_host_port, parse_ip
from homeport.net.caller import LOCAL, Caller, CallerKind, RequestRecord
from homeport.net.connection import ConnectionMemo
from homeport.net.localapi import LocalAPI, LocalAPIError, WhoIs
from homeport.net.machine import MachineView
from homeport.net.policy import Policy
from homeport.net.tokens import TokenChecker, looks_like_token

log = logging.getLogger(__name__)

# Identity headers a client may try to forge; removed before any route sees the request.
IDENTITY_HEADERS = frozenset({
    b"tailscale-user-login", b"tailscale-user-name", b"tailscale-user-profile-pic",
    b"tailscale-app-capabilities", b"x-webauth-user", b"x-webauth-name", b"x-webauth-email",
    b"x-homeport-forwarded-for",
})
# The caller a homeport node forwards for; believed only from the policy's forwarders.
FORWARDED_FOR_HEADER = "x-homeport-forwarded-for"
_TOKEN_HOW = ("send `Authorization: Bearer <token>` with a token created on the server by "
              "`homeport token create NAME`")


@dataclass(frozen=True)
class RequestFacts:
    """What the guard reads from the ASGI scope."""

    client: tuple[str, int] | None
    server: tuple[str, int | None] | None
    headers: Headers

    @classmethod
    def of(cls, scope: MutableMapping[str, Any]) -> RequestFacts:
        client = scope.get("client")
        server = scope.get("server")
        return cls((str(client[0]), int(client[1])) if client else None,
                   (str(server[0]), server[1]) if server else None,
                   Headers(scope=scope))

    @property
    def bearer(self) -> str:
        """The key the client presents: ``Authorization: Bearer``, else ``x-api-key`` (where
        Anthropic's clients put ANTHROPIC_API_KEY)."""
        scheme, _, value = self.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return self.headers.get("x-api-key", "").strip()

    @property
    def forwarded_for(self) -> str:
        """The client a proxy forwarded for: the last X-Forwarded-For entry, the one it added."""
        values = ",".join(self.headers.getlist("x-forwarded-for"))
        entries = [part.strip() for part in values.split(",") if part.strip()]
        return entries[-1] if entries else ""

    @property
    def forwarded(self) -> bool:
        return any(name in self.headers for name in ("x-forwarded-for", "forwarded", "x-real-ip"))


def _host_port(client: tuple[str, int]) -> str:
    """A TCP peer as whois is asked about it: ``ip:port``, IPv4-mapped IPv6 unmapped."""
    return format_host_port(parse_ip(client[0]) or client[0], client[1])


def _decoded(value: str) -> str:
    """A header value that may be RFC 2047 encoded (as tailscale serve encodes names)."""
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError):
        return value


class Identifier:
    def __init__(self, localapi: LocalAPI, tokens: TokenChecker) -> None:
        self.localapi = localapi
        self.tokens = tokens

    async def identify(self, facts: RequestFacts, policy: Policy, machine: MachineView,
                       memo: ConnectionMemo | None, record: RequestRecord) -> Caller:
        """The caller, or UnauthorizedError (401) / ForbiddenError (403) saying what to do."""
        bearer = facts.bearer
        if looks_like_token(bearer):
            token = self.tokens.verify(bearer)
            caller = Caller(kind="token", identity=f"token:{token.name}",
                            grant=policy.token_grant(token.name, token.models, token.admin))
            record.note_caller(caller)
            return caller
        if "tailscale-funnel-request" in facts.headers:
            record.via = "funnel"
            raise UnauthorizedError(f"requests through Tailscale Funnel (from the internet) need "
                                    f"a token: {_TOKEN_HOW}")
        if self._from_proxy(facts, policy):
            if facts.client is not None and machine.userspace:
                # tailscaled hands tailnet peers over from 127.0.0.1 too: one it knows is a peer,
                # never the proxy, whatever it says it forwards.
                whois = await self._whois(_host_port(facts.client), memo)
                if whois is not None:
                    return self._peer(whois, facts, policy, machine, record)
            if facts.forwarded_for:
                return await self._proxied(facts, policy, machine, memo, record)
            return self._local(record)
        if facts.client is None:
            return self._local(record)  # a Unix socket: only local processes can connect
        peer = parse_ip(facts.client[0])
        if peer is None:
            raise ForbiddenError("the peer's address could not be read; denied")
        if machine.is_own_address(peer):
            if facts.forwarded:
                raise ForbiddenError(
                    "this request was forwarded by a proxy on this machine (tailscale serve?) "
                    "that the policy does not name, so its caller is unknown; name it with "
                    '[serve] proxy = "127.0.0.1" in the policy file (HOMEPORT_POLICY)')
            if not (peer.is_loopback and machine.userspace):
                return self._local(record)
        whois = await self._whois(format_host_port(peer, facts.client[1]), memo)
        if whois is None:
            if peer.is_loopback:
                return self._local(record)  # tailscaled did not forward it: a local process
            record.identity = "unknown"
            if bearer:
                raise UnauthorizedError(f"invalid token: {_TOKEN_HOW}")
            raise UnauthorizedError(f"this server answers its tailnet, and others only with a "
                                    f"token: {_TOKEN_HOW}")
        return self._peer(whois, facts, policy, machine, record)

    def _peer(self, whois: WhoIs, facts: RequestFacts, policy: Policy, machine: MachineView,
              record: RequestRecord) -> Caller:
        """A tailnet peer, or the caller it forwards for when the policy names it a forwarder
        (from anyone else the header is ignored: the peer is the caller)."""
        forwarded = facts.headers.get(FORWARDED_FOR_HEADER, "").strip()[:256]
        if not forwarded or forwarded == "local" or not policy.is_forwarder(whois):
            return self._tailnet(whois, "tailnet", policy, machine, record)
        record.identity, record.node, record.via = forwarded, whois.node_name, "forwarded"
        grant = policy.forwarded_grant(forwarded, whois.node_name)
        return Caller(kind="tailnet", identity=forwarded, node=whois.node_name, grant=grant)

    @staticmethod
    def _local(record: RequestRecord) -> Caller:
        record.note_caller(LOCAL)
        return LOCAL

    @staticmethod
    def _from_proxy(facts: RequestFacts, policy: Policy) -> bool:
        if policy.proxy is None:
            return False
        if policy.proxy.startswith("unix:"):
            return (facts.client is None and facts.server is not None
                    and facts.server[1] is None and facts.server[0] == policy.proxy[5:])
        return facts.client is not None and parse_ip(facts.client[0]) == parse_ip(policy.proxy)

    async def _proxied(self, facts: RequestFacts, policy: Policy, machine: MachineView,
                       memo: ConnectionMemo | None, record: RequestRecord) -> Caller:
        forwarded = parse_ip(facts.forwarded_for)
        if forwarded is None:
            raise ForbiddenError("the proxy sent an unreadable X-Forwarded-For; denied")
        record.address = str(forwarded)  # the client, not the proxy's end of the connection
        whois = await self._whois(str(forwarded), memo)
        if whois is None:
            record.identity = "unknown"
            raise UnauthorizedError(f"the proxy forwarded a caller who is not on your tailnet: "
                                    f"{_TOKEN_HOW}")
        claimed = facts.headers.get("tailscale-user-login")
        if claimed is not None and _decoded(claimed).lower() != whois.UserProfile.LoginName.lower():
            record.identity = whois.UserProfile.LoginName
            raise ForbiddenError("the proxy's Tailscale-User-Login does not match what tailscaled "
                                 "says about the forwarded address; denied")
        return self._tailnet(whois, "proxy", policy, machine, record)

    async def _whois(self, address: str, memo: ConnectionMemo | None) -> WhoIs | None:
        """Who tailscaled says has ``address``; None when nobody (404), or when no tailscaled runs
        (then nobody can be on the tailnet, and only a token can help: 401). Errors deny (403)."""
        if memo is not None and address in memo.whois:
            return memo.whois[address]
        try:
            answer = await self.localapi.whois(address)
        except LocalAPIError as exc:
            if exc.unreachable:
                return None
            log.warning("whois %s failed: %s", address, exc.message)
            raise ForbiddenError(f"could not confirm who you are ({exc.message}); access is "
                                 "denied until tailscaled answers") from None
        if memo is not None:
            memo.remember(address, answer)
        return answer

    @staticmethod
    def _tailnet(whois: WhoIs, kind: CallerKind, policy: Policy, machine: MachineView,
                 record: RequestRecord) -> Caller:
        identity = ",".join(whois.tags) if whois.tags else (
            whois.UserProfile.LoginName or f"user {whois.UserProfile.ID}")
        record.identity, record.node, record.via = identity, whois.node_name, kind
        grant = policy.grant_for(whois, machine.owner_user_id)
        return Caller(kind=kind, identity=identity, node=whois.node_name, grant=grant)


def strip_identity_headers(scope: MutableMapping[str, Any]) -> None:
    """Remove client-sent identity headers so nothing downstream can trust them by mistake."""
    headers = scope.get("headers") or []
    if any(name.lower() in IDENTITY_HEADERS for name, _ in headers):
        scope["headers"] = [(name, value) for name, value in headers
                            if name.lower() not in IDENTITY_HEADERS]
