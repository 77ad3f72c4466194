"""Several machines as one: three real servers on loopback, clients talking only to the one with
no models (C), which lists and routes to A and B.

    A: smollm2:135m, only-a          B: smollm2:135m, only-b (a distinct file)
    C: no models, --upstream A --upstream B

The tests that kill A come last (pytest runs them in file order).
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.conftest import MODEL
from tests.support.metrics import value
from tests.support.models import bundled_gguf, distinct_copy, install_model
from tests.support.server import ServerProcess, free_port
from tests.support.waiting import wait_for

SMALL = {"temperature": 0, "seed": 42, "num_predict": 8}
ENV = {"HOMEPORT_CONTEXT_LENGTH": "2048", "HOMEPORT_UPSTREAM_REFRESH": "500ms"}
# Greedy decoding makes this model repeat itself until the context (2048) is full: a stream that
# cannot end before the client leaves (see test_concurrency; no drafts, as there).
ENDLESS = {"messages": [{"role": "user", "content": "Write a haiku about the sea"}],
           "options": {"temperature": 0, "seed": 1, "num_predict": -1, "draft_num_predict": 0}}



def listed(url: str) -> dict[str, list[str]]:
    models = httpx.get(f"{url}/api/tags", timeout=10).json()["models"]
    return {model["name"]: model["homeport"]["nodes"] for model in models}


def node_name(server: ServerProcess) -> str:
    return f"127.0.0.1:{server.port}"


class Mesh:
    def __init__(self, root: Path) -> None:
        self.a = ServerProcess(root / "a", env=ENV)
        self.b = ServerProcess(root / "b", env=ENV)
        for server in (self.a, self.b):
            install_model(server.home / "data" / "models", MODEL, bundled_gguf())
        install_model(self.a.home / "data" / "models", "only-a", bundled_gguf())
        install_model(self.b.home / "data" / "models", "only-b",
                      distinct_copy(root, "only-b"))
        self.c = ServerProcess(root / "c", env=ENV,
                               args=("--upstream", self.a.url, "--upstream", self.b.url))

    def start(self) -> None:
        self.a.start()
        self.b.start()
        self.c.start()
        # Every server records the bundled model when it starts; C is to have none.
        httpx.request("DELETE", f"{self.c.url}/api/delete", json={"model": MODEL},
                      timeout=30).raise_for_status()
        expected = {"smollm2:135m", "only-a:latest", "only-b:latest"}
        assert wait_for(lambda: set(listed(self.c.url)) == expected), listed(self.c.url)

    def stop(self) -> None:
        for server in (self.c, self.b, self.a):
            server.stop()

    def node(self, server: ServerProcess) -> dict[str, Any]:
        """How the gateway C sees one upstream (GET /api/homeport/nodes)."""
        found = httpx.get(f"{self.c.url}/api/homeport/nodes", timeout=10).json()["nodes"]
        return next(node for node in found if node["url"] == server.url)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    nodes = Mesh(tmp_path_factory.mktemp("mesh"))
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


def test_one_list_names_every_machine(mesh: Mesh) -> None:
    a, b = node_name(mesh.a), node_name(mesh.b)
    # The official client reads the merged list (and ignores the extra field).
    names = {model.model for model in ollama.Client(host=mesh.c.url).list().models}
    assert names == {MODEL, "only-a:latest", "only-b:latest"}
    nodes = {name: sorted(where) for name, where in listed(mesh.c.url).items()}
    assert nodes == {MODEL: sorted([a, b]), "only-a:latest": [a], "only-b:latest": [b]}
    ids = {model.id: model for model in openai.OpenAI(base_url=f"{mesh.c.url}/v1",
                                                      api_key="x").models.list()}
    assert set(ids) == {MODEL, "only-a:latest", "only-b:latest"}
    assert (ids["only-b:latest"].model_extra or {})["homeport"] == {"nodes": [b]}
    # A node lists its own models as local.
    assert listed(mesh.a.url)["only-a:latest"] == ["local"]


def test_show_chat_generate_embed_through_the_gateway(mesh: Mesh) -> None:
    client = ollama.Client(host=mesh.c.url)
    assert client.show("only-b").details.family == "llama"
    reply = client.chat("only-a", messages=[{"role": "user", "content": "Hi"}], options=SMALL)
    assert reply.message.role == "assistant"
    assert reply.done
    parts = list(client.chat("only-b", messages=[{"role": "user", "content": "Hi"}],
                             options=SMALL, stream=True))
    assert len(parts) > 1
    assert parts[-1].done
    assert parts[-1].eval_count
    generated = client.generate("only-a", "The sky is", options=SMALL)
    assert generated.done
    assert generated.response
    embedded = client.embed("only-b", input=["one", "two"])
    assert len(embedded.embeddings) == 2
    assert len(embedded.embeddings[0]) > 10
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat("nowhere", messages=[{"role": "user", "content": "Hi"}])
    assert missing.value.status_code == 404


def test_openai_stream_through_the_gateway(mesh: Mesh) -> None:
    client = openai.OpenAI(base_url=f"{mesh.c.url}/v1", api_key="x")
    stream = client.chat.completions.create(
        model="only-b", messages=[{"role": "user", "content": "Hi"}], max_tokens=8,
        temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def test_a_request_can_be_pinned_to_one_machine(mesh: Mesh) -> None:
    body = {"model": "only-b", "prompt": "Hi", "stream": False, "options": SMALL}
    with httpx.Client(base_url=mesh.c.url, timeout=120) as http:
        assert http.post("/api/generate", json=body,
                         headers={"X-Homeport-Node": node_name(mesh.b)}).status_code == 200
        # A does not have only-b: pinned there, A itself answers that it does not.
        on_a = http.post("/api/generate", json=body, headers={"X-Homeport-Node": node_name(mesh.a)})
        assert on_a.status_code == 404
        assert "not found" in on_a.json()["error"]
        assert http.post("/api/generate", json=body,
                         headers={"X-Homeport-Node": "local"}).status_code == 404
        unknown = http.post("/api/generate", json=body, headers={"X-Homeport-Node": "attic"})
        assert unknown.status_code == 400
        assert "attic" in unknown.json()["error"]


def _busy_slots(url: str) -> int:
    models = httpx.get(f"{url}/api/ps", timeout=10).json()["models"]
    return sum(model["slots"]["busy"] for model in models)


def test_a_client_leaving_frees_the_upstream_slot(mesh: Mesh) -> None:
    with httpx.Client(base_url=mesh.c.url, timeout=120) as http, \
            http.stream("POST", "/api/chat", json={"model": "only-b", **ENDLESS}) as reply:
        lines = reply.iter_lines()
        for _ in range(3):
            assert json.loads(next(lines))["done"] is False
        assert _busy_slots(mesh.b.url) == 1
        assert mesh.node(mesh.b)["in_flight"] == 1
    assert wait_for(lambda: _busy_slots(mesh.b.url) == 0, timeout=30), "B's slot still busy"
    assert mesh.node(mesh.b)["in_flight"] == 0


def _served_chats(server: ServerProcess) -> float:
    return value(server.url, "homeport_requests_total", route="/api/chat", status="200")


def test_eight_streams_for_a_model_on_two_machines_spread_over_both(mesh: Mesh) -> None:
    """Each stream holds its slot until all eight have their first token, so all eight are in
    flight at the gateway at once: routing by load must have sent some to each machine (were
    they all on one, its four slots would hold the other four in its queue)."""
    # Both machines start equal in the gateway's eyes: a load it read while an earlier test's slot
    # was still busy would tip the eight to five and three until its next look.
    assert wait_for(lambda: all(mesh.node(server)["load"] == 0 for server in (mesh.a, mesh.b)),
                    timeout=30), [mesh.node(server) for server in (mesh.a, mesh.b)]
    before = {server.url: _served_chats(server) for server in (mesh.a, mesh.b)}
    all_started = threading.Barrier(9, timeout=300)
    leave = threading.Event()
    failures: list[BaseException] = []

    def one_stream() -> None:
        try:
            with httpx.Client(base_url=mesh.c.url, timeout=300) as http, \
                    http.stream("POST", "/api/chat", json={"model": MODEL, **ENDLESS}) as reply:
                assert reply.status_code == 200
                lines = reply.iter_lines()  # held: dropping it would close the stream
                assert json.loads(next(lines))["done"] is False
                all_started.wait()
                leave.wait(300)  # then the client leaves mid-stream
                lines.close()
        except BaseException as exc:  # reported by the test, after the threads end
            failures.append(exc)
            all_started.abort()

    streams = [threading.Thread(target=one_stream) for _ in range(8)]
    for stream in streams:
        stream.start()
    try:
        all_started.wait()
        in_flight = {server.url: mesh.node(server)["in_flight"] for server in (mesh.a, mesh.b)}
        busy = {server.url: _busy_slots(server.url) for server in (mesh.a, mesh.b)}
    finally:
        leave.set()
        for stream in streams:
            stream.join(60)
    assert not failures, failures
    print(f"\n8 streams: in flight at the gateway {in_flight}, busy slots {busy}")
    assert sum(in_flight.values()) == 8
    assert min(in_flight.values()) >= 1, in_flight
    assert min(busy.values()) >= 1, busy
    # Every stream left: both machines free their slots and count the chats they served.
    assert wait_for(lambda: _busy_slots(mesh.a.url) == 0 and _busy_slots(mesh.b.url) == 0)

    def served() -> dict[str, float]:
        return {server.url: _served_chats(server) - before[server.url]
                for server in (mesh.a, mesh.b)}

    assert wait_for(lambda: sum(served().values()) == 8), served()
    assert min(served().values()) >= 1, served()
    assert mesh.node(mesh.a)["in_flight"] == mesh.node(mesh.b)["in_flight"] == 0


def test_a_request_goes_to_the_machine_less_busy_with_requests_from_elsewhere(mesh: Mesh) -> None:
    """A is first in C's list, B has the same priority: a stream sent to A directly (not through
    C) makes A the busier one once C's background check has seen A's /api/ps, and C's next
    request for the model on both goes to B."""
    assert wait_for(lambda: mesh.node(mesh.a)["load"] == mesh.node(mesh.b)["load"] == 0)
    before = {server.url: _served_chats(server) for server in (mesh.a, mesh.b)}
    with httpx.Client(base_url=mesh.a.url, timeout=120) as http, \
            http.stream("POST", "/api/chat", json={"model": MODEL, **ENDLESS}) as reply:
        lines = reply.iter_lines()
        assert json.loads(next(lines))["done"] is False
        assert wait_for(lambda: mesh.node(mesh.a)["load"] == 1), mesh.node(mesh.a)
        assert mesh.node(mesh.a)["in_flight"] == 0, "not C's own request"
        assert mesh.node(mesh.b)["load"] == 0
        answer = ollama.Client(host=mesh.c.url).chat(
            MODEL, messages=[{"role": "user", "content": "Hi"}], options=SMALL)
        assert answer.done
        assert json.loads(next(lines))["done"] is False, "A's stream outlived C's request"
        assert wait_for(lambda: _served_chats(mesh.b) == before[mesh.b.url] + 1)
        assert _served_chats(mesh.a) == before[mesh.a.url]
    assert wait_for(lambda: _busy_slots(mesh.a.url) == 0, timeout=30), "A's slot still busy"
    assert wait_for(lambda: mesh.node(mesh.a)["load"] == 0)


def test_a_node_listed_as_its_own_upstream_is_skipped(tmp_path: Path) -> None:
    """One HOMEPORT_UPSTREAMS for every machine names each machine too: a node finds its own id
    in the upstream's /api/version and lists its models once, as local."""
    port = free_port()
    itself = ServerProcess(tmp_path / "self", env=ENV, port=port,
                           args=("--upstream", f"http://127.0.0.1:{port}"))
    with itself:
        def own_entry() -> dict[str, Any]:
            nodes = httpx.get(f"{itself.url}/api/homeport/nodes", timeout=10).json()["nodes"]
            return dict(nodes[0])

        assert wait_for(lambda: own_entry()["state"] != "unknown"), own_entry()
        assert own_entry()["state"] == "self"
        assert own_entry()["models"] == 0
        assert listed(itself.url) == {MODEL: ["local"]}
        # Pinned to itself by its upstream name: served here, as if pinned to "local".
        reply = httpx.post(f"{itself.url}/api/generate", timeout=120,
                           headers={"X-Homeport-Node": f"127.0.0.1:{port}"},
                           json={"model": MODEL, "prompt": "Hi", "stream": False,
                                 "options": SMALL})
        assert reply.status_code == 200, reply.text


def test_a_forwarding_loop_is_refused(tmp_path: Path) -> None:
    """L2 forwards to L1 a request that already passed through L1 (as a loop A -> B -> A would
    bring it back): L1 refuses it, and L2 relays the refusal."""
    ports = (free_port(), free_port())
    one, two = (ServerProcess(tmp_path / f"loop{index}", env=ENV, port=port,
                              args=("--upstream", f"http://127.0.0.1:{other}"))
                for index, (port, other) in enumerate([ports, ports[::-1]]))
    with one, two:
        one_id = httpx.get(f"{one.url}/api/version", timeout=10).headers["x-homeport-node-id"]
        reply = httpx.post(f"{two.url}/api/chat", timeout=60,
                           headers={"X-Homeport-Node": f"127.0.0.1:{one.port}",
                                    "X-Homeport-Via": one_id},
                           json={"model": MODEL, "messages": []})
        assert reply.status_code == 508
        assert "loop" in reply.json()["error"]
        assert one.answers()
        assert two.answers()


def test_failover_when_a_machine_is_killed_between_requests(mesh: Mesh) -> None:
    client = ollama.Client(host=mesh.c.url)
    mesh.a.stop(signal.SIGKILL)
    # The next requests for the model on both machines are B's, with no error for the client.
    for _ in range(2):
        reply = client.chat(MODEL, messages=[{"role": "user", "content": "Hi"}], options=SMALL)
        assert reply.done
    # A model whose only machine is down: 503 naming it, with Retry-After.
    reply = httpx.post(f"{mesh.c.url}/api/generate", timeout=60,
                       json={"model": "only-a", "prompt": "Hi", "options": SMALL})
    assert reply.status_code == 503
    assert node_name(mesh.a) in reply.json()["error"]
    assert int(reply.headers["retry-after"]) >= 1
    # Once the gateway noticed, A's models leave the list and B's stay.
    assert wait_for(lambda: listed(mesh.c.url) == {MODEL: [node_name(mesh.b)],
                                                   "only-b:latest": [node_name(mesh.b)]})


def test_a_machine_started_again_is_back_in_use_after_its_backoff(mesh: Mesh) -> None:
    assert mesh.node(mesh.a)["state"] == "down"
    mesh.a.start()
    assert wait_for(lambda: mesh.node(mesh.a)["state"] == "up", timeout=90), mesh.node(mesh.a)
    assert listed(mesh.c.url)["only-a:latest"] == [node_name(mesh.a)]
    # only-a lives on A alone: an answer is A's.
    reply = ollama.Client(host=mesh.c.url).generate("only-a", "The sky is", options=SMALL)
    assert reply.done
    assert reply.response


def _kill_after_first_parts(server: ServerProcess, parts: Iterator[Any]) -> list[Any]:
    """Reads three parts of a stream, SIGKILLs the machine answering it, reads on to the end."""
    seen = [next(parts) for _ in range(3)]
    server.stop(signal.SIGKILL)
    seen.extend(parts)
    return seen


def test_a_machine_killed_mid_stream_ends_the_openai_stream_with_an_error_event(
        mesh: Mesh) -> None:
    if not mesh.a.alive():
        mesh.a.start()
    assert wait_for(lambda: mesh.node(mesh.a)["state"] == "up", timeout=90), mesh.node(mesh.a)
    client = openai.OpenAI(base_url=f"{mesh.c.url}/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(
        model="only-a", messages=ENDLESS["messages"], temperature=0, seed=1, stream=True)
    with pytest.raises(openai.APIError) as failed:
        _kill_after_first_parts(mesh.a, iter(stream))
    assert f"upstream {node_name(mesh.a)} failed during the answer" in str(failed.value)
    assert mesh.node(mesh.a)["in_flight"] == 0


def test_a_machine_killed_mid_stream_ends_the_ollama_stream_with_an_error_record(
        mesh: Mesh) -> None:
    mesh.a.start()
    assert wait_for(lambda: mesh.node(mesh.a)["state"] == "up", timeout=90), mesh.node(mesh.a)
    client = ollama.Client(host=mesh.c.url)
    parts = client.chat("only-a", messages=ENDLESS["messages"], options=ENDLESS["options"],
                        stream=True)
    with pytest.raises(ollama.ResponseError) as failed:
        _kill_after_first_parts(mesh.a, parts)
    assert f"upstream {node_name(mesh.a)} failed during the answer" in failed.value.error
    # Never a second answer from elsewhere, and the gateway keeps serving: B answers the model
    # both have, the machine that died is shown down.
    reply = client.chat(MODEL, messages=[{"role": "user", "content": "Hi"}], options=SMALL)
    assert reply.done
    assert mesh.node(mesh.a)["state"] == "down"
    assert mesh.node(mesh.a)["in_flight"] == 0
