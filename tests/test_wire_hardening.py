"""The HTTP boundary against a hostile client, on the real server over real sockets: bodies that
nest too deeply or carry lone surrogates, Host headers no browser sends, and connections that are
silent, trickle their headers or come too many from one address. Each is refused or repaired with
a client's status (never a 5xx, which clients retry), and the server keeps serving."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL
from tests.support.rogue import Reply, RogueRequest, RogueServer
from tests.support.server import ServerProcess

BOUNDED = {"temperature": 0, "seed": 42, "num_predict": 4}
CLOSE_BOUND = 60.0  # how long a test waits for the server to close a connection: generous
HEADER_TIMEOUT = 1.0


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


def _still_serving(url: str) -> None:
    assert httpx.get(f"{url}/api/version", timeout=60).status_code == 200


def _post_raw(http: httpx.Client, path: str, body: bytes) -> httpx.Response:
    return http.post(path, content=body, headers={"content-type": "application/json"})


def _body(data: dict[str, object]) -> bytes:
    """JSON as an ASCII-escaping encoder writes it: a lone surrogate becomes ``\\ud800``."""
    return json.dumps(data).encode()


# --- item 10: deep nesting is a 400 on every route that reads JSON ----------------------------

JSON_ROUTES = [("POST", path) for path in (
    "/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show", "/api/pull",
    "/api/create", "/api/copy", "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
    "/v1/messages", "/v1/messages/count_tokens", "/v1/responses")] + [("DELETE", "/api/delete")]
DEEP_BODIES = {"arrays": b"[" * 100_000, "objects": b'{"a":' * 100_000}


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
@pytest.mark.parametrize("shape", list(DEEP_BODIES))
def test_deep_nesting_is_a_400_on_every_json_route(http: httpx.Client, base_url: str,
                                                   method: str, path: str, shape: str) -> None:
    reply = http.request(method, path, content=DEEP_BODIES[shape],
                         headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert "request body nests too deeply" in reply.text
    _still_serving(base_url)


def test_nesting_python_parses_but_past_the_limit_is_a_400(http: httpx.Client) -> None:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(200):  # 400 levels: json.loads manages them, the bound does not allow them
        schema = {"type": "object", "properties": {"a": schema}}
    reply = _post_raw(http, "/api/chat", _body({
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "format": schema,
        "stream": False, "options": BOUNDED}))
    assert reply.status_code == 400, reply.text
    assert "nests too deeply" in reply.json()["error"]


def test_ordinary_nesting_still_works(http: httpx.Client) -> None:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(5):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    reply = _post_raw(http, "/api/chat", _body({
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "format": schema,
        "stream": False, "options": {**BOUNDED, "num_predict": 40}}))
    assert reply.status_code == 200, reply.text


# --- item 12: lone surrogates become U+FFFD where the body is parsed --------------------------

LONE = "\ud800 and \udfff"
SURROGATE_REQUESTS = {
    "chat": ("/api/chat", {"model": MODEL, "stream": False, "options": BOUNDED,
                           "messages": [{"role": "user", "content": LONE}]}),
    "raw generate": ("/api/generate", {"model": MODEL, "prompt": LONE, "raw": True,
                                       "stream": False, "options": BOUNDED}),
    "openai chat": ("/v1/chat/completions", {"model": MODEL, "max_tokens": 4, "temperature": 0,
                                             "messages": [{"role": "user", "content": LONE}]}),
    "openai embeddings": ("/v1/embeddings", {"model": MODEL, "input": [LONE, "port"]}),
    "ollama embed": ("/api/embed", {"model": MODEL, "input": LONE}),
    "anthropic system": ("/v1/messages", {"model": MODEL, "max_tokens": 4, "system": LONE,
                                          "messages": [{"role": "user", "content": "hi"}]}),
    "anthropic count_tokens": ("/v1/messages/count_tokens", {
        "model": MODEL, "system": LONE, "messages": [{"role": "user", "content": LONE}]}),
    "a lone surrogate in a key": ("/api/chat", {
        "model": MODEL, "stream": False, "options": {**BOUNDED, LONE: 1},
        "messages": [{"role": "user", "content": "hi"}]}),
}


@pytest.mark.parametrize("case", list(SURROGATE_REQUESTS))
def test_lone_surrogates_are_replaced_not_a_500(http: httpx.Client, case: str) -> None:
    path, data = SURROGATE_REQUESTS[case]
    body = _body(data)
    assert b"\\ud800" in body
    reply = _post_raw(http, path, body)
    assert reply.status_code == 200, reply.text


def test_lone_surrogates_in_a_streamed_chat(http: httpx.Client) -> None:
    body = _body({"model": MODEL, "options": BOUNDED,
                  "messages": [{"role": "user", "content": LONE}]})
    with http.stream("POST", "/api/chat", content=body) as reply:
        assert reply.status_code == 200
        lines = [json.loads(line) for line in reply.iter_lines() if line]
    assert lines[-1]["done"] is True
    assert not any("error" in line for line in lines)


def test_surrogates_encoded_as_raw_bytes_are_replaced_too(http: httpx.Client) -> None:
    """CESU-8 bytes for U+D800 (ED A0 80): Python's JSON decoder lets them through as a lone
    surrogate, so they are repaired like the escaped form."""
    body = _body({"model": MODEL, "prompt": "PLACEHOLDER", "raw": True, "stream": False,
                  "options": BOUNDED}).replace(b"PLACEHOLDER", b"\xed\xa0\x80")
    reply = _post_raw(http, "/api/generate", body)
    assert reply.status_code == 200, reply.text


def test_a_created_models_system_keeps_the_replacement_character(http: httpx.Client) -> None:
    name = "wire-surrogate:latest"
    reply = _post_raw(http, "/api/create", _body({
        "model": name, "from": MODEL, "system": f"be kind {LONE}", "stream": False}))
    assert reply.status_code == 200, reply.text
    try:
        shown = http.post("/api/show", json={"model": name})
        assert shown.status_code == 200
        assert shown.json()["system"] == "be kind \ufffd and \ufffd"
    finally:
        http.request("DELETE", "/api/delete", json={"model": name})


# --- item 13: Host headers parsed strictly, then the allow rules -------------------------------

def _bad_hosts(port: int) -> list[str]:
    return [f"localhost:{port}.evil.com", f"[::1].evil.com:{port}", "127.0.0.1/evil.com",
            "127.0.0.1%evil.com", f"127.0.0.1:{port}@evil.com", "::1", f"localhost:{port}:1",
            "[::1", "[v1.evil]", "local host"]


def test_malformed_host_headers_are_refused(http: httpx.Client, server: ServerProcess) -> None:
    for host in _bad_hosts(server.port):
        reply = http.get("/api/tags", headers={"host": host})
        assert reply.status_code == 403, host
        assert "Host" in reply.json()["error"], host
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", f"[::1]:{server.port}",
                 "localhost", "localhost.", "app.localhost:1"):
        assert http.get("/api/tags", headers={"host": host}).status_code == 200, host


def test_a_refused_host_is_answered_in_each_apis_error_shape(http: httpx.Client,
                                                             server: ServerProcess) -> None:
    host = {"host": f"localhost:{server.port}.evil.com"}
    ollama_shape = http.get("/api/tags", headers=host)
    assert ollama_shape.status_code == 403
    assert isinstance(ollama_shape.json()["error"], str)
    openai_shape = http.get("/v1/models", headers=host)
    assert openai_shape.status_code == 403
    assert openai_shape.json()["error"]["type"] == "permission_error"
    anthropic_shape = http.post("/v1/messages", headers=host, json={})
    assert anthropic_shape.status_code == 403
    assert anthropic_shape.json()["type"] == "error"
    assert anthropic_shape.json()["error"]["type"] == "permission_error"


# --- item 14: header and idle timeouts, a cap on one peer's connections -----------------------

@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with one-second header and idle timeouts."""
    home = tmp_path_factory.mktemp("impatient")
    with ServerProcess(home, env={"HOMEPORT_HEADER_TIMEOUT": f"{HEADER_TIMEOUT}s",
                                  "HOMEPORT_IDLE_TIMEOUT": "1"}) as server:
        yield server


def _connect(server: ServerProcess, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", server.port))
    return sock


def _closed_by_server(sock: socket.socket, bound: float = CLOSE_BOUND) -> bool:
    """Whether the server closes ``sock`` within ``bound`` seconds (any data it sends first is
    read and dropped)."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        try:
            if sock.recv(65536) == b"":
                return True
        except ConnectionResetError:
            return True
    return False


def _request(host: str) -> bytes:
    return f"GET /api/version HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def _read_response(sock: socket.socket) -> bytes:
    """One small response (headers and a Content-Length body) from ``sock``."""
    data = b""
    sock.settimeout(CLOSE_BOUND)
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection instead of answering"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_a_silent_connection_is_closed(impatient: ServerProcess) -> None:
    with _connect(impatient) as sock:
        assert _closed_by_server(sock)
    _still_serving(impatient.url)


def test_a_trickled_header_is_closed_though_each_byte_comes_in_time(
        impatient: ServerProcess) -> None:
    with _connect(impatient) as sock:
        sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        deadline = time.monotonic() + CLOSE_BOUND
        closed = False
        while not closed and time.monotonic() < deadline:
            # A byte every fifth of the timeout: a clock restarted by each byte never runs out.
            readable, _, _ = select.select([sock], [], [], HEADER_TIMEOUT / 5)
            if readable:
                closed = _closed_by_server(sock)
                break
            try:
                sock.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        assert closed
    _still_serving(impatient.url)


def test_an_idle_kept_alive_connection_is_closed(impatient: ServerProcess) -> None:
    with _connect(impatient) as sock:
        sock.sendall(_request("127.0.0.1"))
        assert _read_response(sock).startswith(b"HTTP/1.1 200")
        assert _closed_by_server(sock)
    _still_serving(impatient.url)


def test_a_stream_outlasting_both_timeouts_completes(impatient: ServerProcess) -> None:
    """A pull whose registry holds the manifest back until the test lets it go: the answer is in
    flight for several timeouts, and its last line still arrives."""
    release = threading.Event()

    def held_manifest(_request: RogueRequest) -> Reply:
        release.wait(CLOSE_BOUND)
        return Reply(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"held back"}]}')

    registry = RogueServer().start()
    registry.routes["/v2/library/held/manifests/latest"] = held_manifest
    try:
        with httpx.Client(base_url=impatient.url, timeout=CLOSE_BOUND) as client, \
                client.stream("POST", "/api/pull", json={
                    "model": f"{registry.host}/library/held:latest", "insecure": True}) as reply:
            assert reply.status_code == 200
            lines = reply.iter_lines()
            assert json.loads(next(lines))["status"] == "pulling manifest"
            time.sleep(4 * HEADER_TIMEOUT)  # the stream cannot end before the release below
            release.set()
            rest = [json.loads(line) for line in lines if line]
        assert rest
        assert "error" in rest[-1]  # the registry's 404, told after the wait
    finally:
        release.set()
        registry.stop()
    _still_serving(impatient.url)


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that lets one address hold four connections, with timeouts far off."""
    home: Path = tmp_path_factory.mktemp("capped")
    with ServerProcess(home, env={"HOMEPORT_MAX_CONNECTIONS_PER_PEER": "4",
                                  "HOMEPORT_HEADER_TIMEOUT": "10m",
                                  "HOMEPORT_IDLE_TIMEOUT": "600"}) as server:
        yield server


def test_connections_past_the_per_peer_cap_are_refused(capped: ServerProcess) -> None:
    # 127.0.0.2 is loopback too (this machine), but no other test's connections come from it.
    peer = "127.0.0.2"
    held = [_connect(capped, peer) for _ in range(4)]
    try:
        for sock in held:  # each answered, so the server has counted it
            sock.sendall(_request("127.0.0.1"))
            assert _read_response(sock).startswith(b"HTTP/1.1 200")
        with _connect(capped, peer) as extra:
            assert _closed_by_server(extra)
        _still_serving(capped.url)  # another address is not affected
        for sock in held:  # the earlier connections are still open and served
            sock.sendall(_request("127.0.0.1"))
            assert _read_response(sock).startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()
    # Once they are gone, the address may connect again (the count goes down on close).
    deadline = time.monotonic() + CLOSE_BOUND
    while True:
        with _connect(capped, peer) as sock:
            try:
                sock.sendall(_request("127.0.0.1"))
                if _read_response(sock).startswith(b"HTTP/1.1 200"):
                    break
            except (AssertionError, OSError):
                assert time.monotonic() < deadline, "the address stayed refused"
        time.sleep(0.1)
