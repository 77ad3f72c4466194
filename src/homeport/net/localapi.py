"""Asking the local tailscaled who a peer is (whois) and how this node stands (status).

The LocalAPI is HTTP over a Unix socket; tailscaled refuses requests whose Host is not
``local-tailscaled.sock`` (and any with an Origin), so the base URL carries that name. Any local user
may ask: no privilege is needed. Shapes follow tailscale's ``apitype.WhoIsResponse`` and
``ipnstate.Status``; unknown fields are ignored, missing ones take empty defaults.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from homeport.errors import HomeportError
from homeport.net.addresses import IPAddress, parse_ip

log = logging.getLogger(__name__)

BASE_URL = "http://local-tailscaled.sock"
TIMEOUT = httpx.Timeout(3.0)


class LocalAPIError(HomeportError):
    """tailscaled could not be asked or gave no usable answer; whoever asked must deny."""

    status = 503

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable  # nothing listens on the socket: tailscaled is not running


class _Shape(BaseModel):
    model_config = ConfigDict(extra="ignore")


class WhoIsNode(_Shape):
    ID: int = 0
    StableID: str = ""
    Name: str = ""  # the MagicDNS name, with a trailing dot
    ComputedName: str = ""
    User: int = 0
    Addresses: list[str] = Field(default_factory=list)
    Tags: list[str] | None = None


class Profile(_Shape):
    ID: int = 0
    LoginName: str = ""
    DisplayName: str = ""


class WhoIs(_Shape):
    Node: WhoIsNode
    UserProfile: Profile = Field(default_factory=Profile)
    # Application capabilities granted in the tailnet policy: key "domain/cap/name", opaque values.
    CapMap: dict[str, list[Any] | None] | None = None

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(self.Node.Tags or ())

    @property
    def node_name(self) -> str:
        """The short node name: ComputedName, else the MagicDNS name's first label."""
        return self.Node.ComputedName or self.Node.Name.split(".")[0]


class SelfStatus(_Shape):
    ID: str = ""
    HostName: str = ""
    DNSName: str = ""
    UserID: int = 0
    TailscaleIPs: list[str] | None = None
    Tags: list[str] | None = None


class PeerStatus(_Shape):
    """One other node in the netmap (``ipnstate.PeerStatus``)."""

    HostName: str = ""
    DNSName: str = ""  # in this tailnet's MagicDNS domain unless shared in from another tailnet
    TailscaleIPs: list[str] | None = None
    Online: bool = False
    ShareeNode: bool = False  # a node of someone this tailnet shared a node with: not ours


class Status(_Shape):
    BackendState: str = ""
    TUN: bool = True  # False: userspace networking, peers arrive from 127.0.0.1
    Self: SelfStatus | None = None
    MagicDNSSuffix: str = ""
    Peer: dict[str, PeerStatus] | None = None  # only when asked for with peers

    @property
    def running(self) -> bool:
        return self.BackendState == "Running" and self.Self is not None

    @property
    def tailnet_addresses(self) -> tuple[IPAddress, ...]:
        """This node's tailnet addresses while it runs; none otherwise."""
        if not self.running or self.Self is None:
            return ()
        found = (parse_ip(text) for text in self.Self.TailscaleIPs or [])
        return tuple(address for address in found if address is not None)

    @property
    def userspace(self) -> bool:
        """Userspace networking: tailscaled hands tailnet peers over from 127.0.0.1."""
        return not self.TUN

    @property
    def dns_names(self) -> list[str]:
        """This node's MagicDNS name and its short form, for the Host allow-list."""
        if self.Self is None or not self.Self.DNSName:
            return []
        full = self.Self.DNSName.rstrip(".").lower()
        return [full, full.split(".")[0]]


def _failure(exc: httpx.HTTPError) -> LocalAPIError:
    if isinstance(exc, httpx.ConnectError):
        return LocalAPIError("tailscaled is not running or its socket cannot be opened",
                             unreachable=True)
    if isinstance(exc, httpx.TimeoutException):
        return LocalAPIError("tailscaled did not answer in time")
    return LocalAPIError(f"the LocalAPI request failed ({type(exc).__name__})")


def _parse(model: type[_Shape], response: httpx.Response, what: str) -> Any:
    if response.status_code != 200:
        raise LocalAPIError(f"tailscaled answered {what} with HTTP {response.status_code}")
    try:
        return model.model_validate_json(response.content)
    except ValidationError:
        raise LocalAPIError(f"tailscaled's {what} answer had an unexpected shape") from None


class LocalAPI:
    """An async LocalAPI client for the running server (one connection pool, reused)."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(socket_path)),
            base_url=BASE_URL, timeout=TIMEOUT)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def whois(self, address: str) -> WhoIs | None:
        """Who has ``address`` (``ip:port``, ``[v6]:port`` or a bare ip); None when nobody (404)."""
        try:
            response = await self._client.get("/localapi/v0/whois", params={"addr": address})
        except httpx.HTTPError as exc:
            raise _failure(exc) from None
        if response.status_code == 404:
            return None
        whois: WhoIs = _parse(WhoIs, response, "whois")
        return whois

    async def status(self, peers: bool = False) -> Status:
        try:
            response = await self._client.get("/localapi/v0/status",
                                              params={"peers": "true" if peers else "false"})
        except httpx.HTTPError as exc:
            raise _failure(exc) from None
        status: Status = _parse(Status, response, "status")
        return status


def read_status(socket_path: Path) -> Status:
    """The node's status, asked synchronously (at startup, before the event loop runs)."""
    transport = httpx.HTTPTransport(uds=str(socket_path))
    try:
        with httpx.Client(transport=transport, base_url=BASE_URL, timeout=TIMEOUT) as client:
            response = client.get("/localapi/v0/status", params={"peers": "false"})
    except httpx.HTTPError as exc:
        raise _failure(exc) from None
    status: Status = _parse(Status, response, "status")
    return status
