"""A loopback HTTP proxy the tests put between homeport and a registry: it records every request
(method, path, Range) and can drop a blob response part-way (once) or slow responses down."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field

from tests.support.server import free_port

CHUNK = 16 * 1024


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    response_bytes: int = 0

    @property
    def range_start(self) -> int | None:
        value = self.headers.get("range", "")
        if not value.startswith("bytes="):
            return None
        return int(value[6:].split("-")[0])

    @property
    def is_blob(self) -> bool:
        return self.method == "GET" and "/blobs/sha256:" in self.path


@dataclass
class _Connection:
    client: socket.socket
    upstream: socket.socket
    current: Seen | None = None
    closed: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class HttpProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.requests: list[Seen] = []
        self.cut_blob_after: int | None = None  # drop the next blob response after this many bytes
        self.cuts = 0
        self.bytes_per_second: float | None = None
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._connections: list[_Connection] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> HttpProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._listener.close()
        with self._lock:
            for connection in self._connections:
                connection.close()

    def blob_requests(self, digest: str) -> list[Seen]:
        with self._lock:
            return [seen for seen in self.requests if seen.is_blob and seen.path.endswith(digest)]

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            connection = _Connection(client, upstream)
            with self._lock:
                self._connections.append(connection)
            threading.Thread(target=self._requests, args=(connection,), daemon=True).start()
            threading.Thread(target=self._responses, args=(connection,), daemon=True).start()

    def _requests(self, connection: _Connection) -> None:
        """Client to registry: forward, recording each request head (GETs carry no body)."""
        buffer = b""
        while not connection.closed.is_set():
            try:
                data = connection.client.recv(CHUNK)
            except OSError:
                break
            if not data:
                break
            buffer += data
            while b"\r\n\r\n" in buffer:
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    key, _, value = line.partition(":")
                    headers[key.strip().lower()] = value.strip()
                seen = Seen(method, path, headers)
                with self._lock:
                    self.requests.append(seen)
                connection.current = seen
            try:
                connection.upstream.sendall(data)
            except OSError:
                break
        connection.close()

    def _responses(self, connection: _Connection) -> None:
        """Registry to client: forward, slowly if asked, cutting a blob response if asked."""
        while not connection.closed.is_set():
            try:
                data = connection.upstream.recv(CHUNK)
            except OSError:
                break
            if not data:
                break
            seen = connection.current
            if seen is not None:
                seen.response_bytes += len(data)
                limit = self.cut_blob_after
                if limit is not None and seen.is_blob and seen.response_bytes > limit:
                    self.cut_blob_after = None
                    self.cuts += 1
                    break
            if self.bytes_per_second:
                time.sleep(len(data) / self.bytes_per_second)
            try:
                connection.client.sendall(data)
            except OSError:
                break
        connection.close()
