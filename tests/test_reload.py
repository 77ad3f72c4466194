"""A reload (a chat with another num_ctx) whose client gives up while a stream still runs on the
old copy must not leave two copies of the model: one copy per model, whatever clients do."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import MODEL
from tests.support.metrics import value
from tests.support.server import ServerProcess
from tests.support.waiting import wait_for

RELOADING = "load-time options changed"
# Greedy decoding makes this small model repeat itself without an end-of-generation token (see
# test_concurrency's ENDLESS); 4000 tokens in an 8192 context outlast every step below.
LONG_STREAM = {"model": MODEL, "messages": [{"role": "user", "content": "Write a haiku about the sea"}],
               "keep_alive": -1,
               "options": {"temperature": 0, "seed": 1, "num_predict": 4000, "num_ctx": 8192,
                           "draft_num_predict": 0}}
OTHER_CTX = 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"HOMEPORT_NUM_PARALLEL": "1", "HOMEPORT_KEEP_ALIVE": "-1"}
    with ServerProcess(tmp_path_factory.mktemp("reload"), env=env) as process:
        yield process



def _abandoned_chat(url: str, body: dict[str, object]) -> socket.socket:
    """A chat sent over a bare socket, so that the test can hang up on it at any moment."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST /api/chat HTTP/1.1\r\nHost: {host}:{port}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
                 .encode() + payload)
    return sock


def _copies(url: str) -> list[dict[str, object]]:
    models = httpx.get(f"{url}/api/ps", timeout=30).json()["models"]
    return [model for model in models if model["name"] == MODEL]


def test_an_abandoned_reload_leaves_one_copy(server: ServerProcess) -> None:
    url = server.url
    with httpx.Client(base_url=url, timeout=300) as http:
        with http.stream("POST", "/api/chat", json=LONG_STREAM) as running:
            lines = running.iter_lines()  # kept: a dropped iterator closes the response
            assert json.loads(next(lines))["done"] is False
            # A chat with another num_ctx waits for the stream to end before reloading...
            reloads = server.log().count(RELOADING)
            reload = _abandoned_chat(url, {
                "model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                "options": {"num_ctx": OTHER_CTX, "num_predict": 4}})
            assert wait_for(lambda: server.log().count(RELOADING) > reloads, timeout=120)
            reload.close()  # ...and its client gives up meanwhile
            assert value(url, "homeport_busy_slots", model=MODEL) == 1, "the stream still runs"
            assert len(_copies(url)) == 1
        # The stream's client goes too: the old copy, which no request can reach, is unloaded
        # rather than kept for its keep_alive (forever here).
        assert wait_for(lambda: _copies(url) == [], timeout=120)
        reply = http.post("/api/chat", json={
            "model": MODEL, "stream": False, "messages": [{"role": "user", "content": "hi"}],
            "options": {"num_ctx": OTHER_CTX, "num_predict": 4, "temperature": 0}})
        assert reply.status_code == 200, reply.text
        copies = _copies(url)
        assert len(copies) == 1, copies
        assert copies[0]["context_length"] == OTHER_CTX


def test_a_reload_waits_for_every_other_copy(server: ServerProcess) -> None:
    """Whatever was left marked for unloading, the next load retires it first: never two."""
    url = server.url
    with httpx.Client(base_url=url, timeout=300) as http:
        for num_ctx in (2048, OTHER_CTX, 2048):
            reply = http.post("/api/chat", json={
                "model": MODEL, "stream": False, "messages": [{"role": "user", "content": "hi"}],
                "options": {"num_ctx": num_ctx, "num_predict": 2, "temperature": 0}})
            assert reply.status_code == 200, reply.text
            copies = _copies(url)
            assert [copy["context_length"] for copy in copies] == [num_ctx]
