"""A fake tailscaled: a real HTTP server on a Unix socket that speaks the LocalAPI's whois and status
(with the netmap's peers unless asked with ``peers=false``).

It answers with Tailscale's JSON shapes (``apitype.WhoIsResponse``, ``ipnstate.Status``), refuses
requests whose Host is not ``local-tailscaled.sock`` or that carry an Origin (403, as tailscaled
does), and can be told to answer 404 or 500 for every whois, to map every 127.0.0.1 peer to a node
(userspace networking), or to vanish (socket gone). Tests change it between requests.
"""

from __future__ import annotations

import json
import socketserver
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

HOST = "local-tailscaled.sock"


@dataclass
class Node:
    ip: str
    login: str
    user_id: int
    name: str
    tags: list[str] = field(default_factory=list)
    capmap: dict[str, list[Any]] | None = None
    node_id: int = 0

    def whois(self) -> dict[str, Any]:
        suffix = "tail1234.ts.net"
        body: dict[str, Any] = {
            "Node": {
                "ID": self.node_id or self.user_id * 100,
                "StableID": f"n{self.user_id}CNTRL",
                "Name": f"{self.name}.{suffix}.",
                "User": self.user_id,
                "Addresses": [f"{self.ip}/32" if ":" not in self.ip else f"{self.ip}/128"],
                "ComputedName": self.name,
            },
            "UserProfile": {
                "ID": self.user_id,
                "LoginName": "tagged-devices" if self.tags else self.login,
                "DisplayName": "tagged-devices" if self.tags else self.login.split("@")[0].title(),
                "ProfilePicURL": "",
            },
        }
        if self.tags:
            body["Node"]["Tags"] = list(self.tags)
        if self.capmap is not None:
            body["CapMap"] = self.capmap
        return body


@dataclass
class Peer:
    """Another node in the netmap, as status lists it (``ipnstate.PeerStatus``)."""

    name: str
    ips: list[str]
    online: bool = True
    tailnet_suffix: str = "tail1234.ts.net"  # another suffix: a node shared in from elsewhere
    sharee: bool = False

    def status(self) -> dict[str, Any]:
        return {"ID": f"n{self.name}CNTRL", "HostName": self.name,
                "DNSName": f"{self.name}.{self.tailnet_suffix}.", "OS": "linux",
                "TailscaleIPs": list(self.ips), "Online": self.online,
                "ShareeNode": self.sharee}


@dataclass
class FakeState:
    nodes: dict[str, Node] = field(default_factory=dict)
    whois_status: int = 200  # 404 or 500 make every whois fail that way
    userspace_node: Node | None = None  # every 127.0.0.1:port peer is this node
    backend_state: str = "Running"
    self_ips: list[str] = field(default_factory=list)
    self_user_id: int = 1
    tun: bool = True
    peers: dict[str, Peer] = field(default_factory=dict)  # by name
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path?query, Host)

    def status(self, with_peers: bool = True) -> dict[str, Any]:
        running = self.backend_state == "Running"
        peers = ({f"nodekey:{peer.name}": peer.status() for peer in list(self.peers.values())}
                 if with_peers and running else None)
        return {
            "Peer": peers,
            "Version": "1.90.0-fake",
            "TUN": self.tun,
            "BackendState": self.backend_state,
            "TailscaleIPs": self.self_ips if running else None,
            "Self": {
                "ID": "nSELFCNTRL", "HostName": "homebox",
                "DNSName": "homebox.tail1234.ts.net.", "OS": "linux",
                "UserID": self.self_user_id,
                "TailscaleIPs": self.self_ips if running else None,
                "Online": running,
            },
            "MagicDNSSuffix": "tail1234.ts.net",
            "CurrentTailnet": {"Name": "example.com", "MagicDNSSuffix": "tail1234.ts.net",
                               "MagicDNSEnabled": True},
            "User": {str(self.self_user_id): {"ID": self.self_user_id,
                                              "LoginName": "owner@example.com"}},
        }

    def lookup(self, addr: str) -> Node | None:
        if addr.startswith("127.0.0.1:") and self.userspace_node is not None:
            return self.userspace_node
        host = addr
        if addr.startswith("["):
            host = addr[1:addr.index("]")]
        elif addr.count(":") == 1:
            host = addr.split(":")[0]
        return self.nodes.get(addr) or self.nodes.get(host)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def address_string(self) -> str:
        return "unix"

    def _send(self, status: int, body: Any) -> None:
        data = (json.dumps(body) if not isinstance(body, str) else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if not isinstance(body, str)
                         else "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        state = self.server.state
        host = self.headers.get("Host", "")
        state.requests.append((self.path, host))
        if host != HOST or self.headers.get("Origin") or self.headers.get("Referer"):
            self._send(403, "invalid localapi request\n")
            return
        url = urlsplit(self.path)
        if url.path == "/localapi/v0/status":
            peers = parse_qs(url.query).get("peers", ["true"])[0] != "false"
            self._send(200, state.status(with_peers=peers))
        elif url.path == "/localapi/v0/whois":
            addr = parse_qs(url.query).get("addr", [""])[0]
            if not addr:
                self._send(400, "missing 'addr' parameter\n")
            elif state.whois_status != 200:
                self._send(state.whois_status, "no match for IP:port\n"
                           if state.whois_status == 404 else "internal error\n")
            elif (node := state.lookup(addr)) is None:
                self._send(404, "no match for IP:port\n")
            else:
                self._send(200, node.whois())
        else:
            self._send(404, "404 page not found\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    state: FakeState


class FakeTailscaled:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.state = FakeState()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FakeTailscaled:
        self.socket_path.unlink(missing_ok=True)
        server = _Server(str(self.socket_path), _Handler)
        server.state = self.state
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.socket_path.unlink(missing_ok=True)

    def add(self, node: Node) -> Node:
        self.state.nodes[node.ip] = node
        return node

    def whois_asked(self) -> list[str]:
        return [path for path, _ in self.state.requests if "/whois" in path]
