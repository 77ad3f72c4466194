"""A rogue registry: a small real HTTP server whose every answer a test scripts, to try each way a
registry can lie to or steer a pull (see shared/reference/security.md)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Handler = Callable[["RogueRequest"], "Reply | None"]


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class RogueRequest(BaseHTTPRequestHandler):
    server: RogueServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.seen.append(("GET", self.path, dict(self.headers)))
        route = self.server.route_for(self.path)
        if route is None:
            self.reply(Reply(404, b'{"errors":[{"code":"NOT_FOUND","message":"not here"}]}'))
            return
        result = route(self)
        if isinstance(result, Reply):
            self.reply(result)

    do_HEAD = do_GET

    def reply(self, reply: Reply) -> None:
        self.send_response(reply.status)
        headers = {"Content-Length": str(len(reply.body)), **reply.headers}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class RogueServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RogueRequest)
        self.port = self.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.routes: dict[str, Handler] = {}
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def route_for(self, path: str) -> Handler | None:
        return self.routes.get(path.split("?")[0])

    def start(self) -> RogueServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    # --- helpers to script a registry ----------------------------------------------------------

    def serve(self, path: str, reply: Reply) -> None:
        self.routes[path] = lambda _request: reply

    def serve_manifest(self, repository: str, tag: str, manifest: bytes | dict[str, Any]) -> None:
        body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        self.serve(f"/v2/{repository}/manifests/{tag}", Reply(200, body, {
            "Content-Type": "application/vnd.docker.distribution.manifest.v2+json"}))

    def serve_blob(self, repository: str, digest: str, data: bytes,
                   claimed_total: int | None = None) -> None:
        """Serve ``data`` as ``digest`` with Range support; ``claimed_total`` can lie about it."""

        def blob(request: RogueRequest) -> Reply:
            total = len(data) if claimed_total is None else claimed_total
            wanted = request.headers.get("Range", "")
            if wanted.startswith("bytes="):
                start_text, _, end_text = wanted[6:].partition("-")
                start = int(start_text)
                end = min(int(end_text) if end_text else len(data) - 1, len(data) - 1)
                return Reply(206, data[start:end + 1], {
                    "Content-Range": f"bytes {start}-{end}/{total}"})
            return Reply(200, data)

        self.routes[f"/v2/{repository}/blobs/{digest}"] = blob


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def manifest_for(config: tuple[str, int], layers: list[tuple[str, str, int]]) -> dict[str, Any]:
    """A Docker v2 manifest: ``config`` is (digest, size); each layer (kind, digest, size)."""
    return {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": config[0], "size": config[1]},
        "layers": [{"mediaType": f"application/vnd.ollama.image.{kind}", "digest": digest,
                    "size": size} for kind, digest, size in layers],
    }
