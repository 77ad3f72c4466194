"""A light gateway node, ``homeport nodes`` and ``homeport doctor``: real processes on loopback.

    A: the bundled smollm2:135m, a real engine
    G: --no-engine --upstream A --upstream DEAD (a port nothing listens on)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import psutil
import pytest

from tests.conftest import MODEL
from tests.support.cli import homeport
from tests.support.server import ServerProcess, free_port, resident_bytes
from tests.support.waiting import wait_for

ENV = {"HOMEPORT_CONTEXT_LENGTH": "2048", "HOMEPORT_UPSTREAM_REFRESH": "500ms"}


class Gateway:
    def __init__(self, root: Path) -> None:
        self.a = ServerProcess(root / "a", env=ENV)
        self.dead_url = f"http://127.0.0.1:{free_port()}"
        self.g = ServerProcess(root / "g", env=ENV,
                               args=("--no-engine", "--upstream", self.a.url,
                                     "--upstream", self.dead_url))
        self.start_seconds = 0.0

    def nodes(self) -> dict[str, dict[str, Any]]:
        found = httpx.get(f"{self.g.url}/api/homeport/nodes", timeout=10).json()["nodes"]
        return {node["url"]: node for node in found}

    def start(self) -> None:
        self.a.start()
        started = time.monotonic()
        self.g.start()
        self.start_seconds = time.monotonic() - started
        assert wait_for(lambda: {node["state"] for node in self.nodes().values()}
                        == {"up", "down"}), self.nodes()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    nodes = Gateway(tmp_path_factory.mktemp("gateway"))
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.g.stop()
        nodes.a.stop()


def llama_cpp_mapped(pid: int) -> bool:
    """Whether llama.cpp's libraries are mapped into the process (it imported llama_cpp)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libllama" in maps or "libggml" in maps


def test_a_node_loads_llama_cpp_only_with_its_first_model(gateway: Gateway) -> None:
    """A (an engine, the bundled model recorded but not loaded yet) and the gateway G: neither
    has llama.cpp mapped; once A loaded a model for G's request, A has it and G still has not."""
    assert gateway.a.process is not None
    assert gateway.g.process is not None
    assert not llama_cpp_mapped(gateway.a.process.pid)
    assert not llama_cpp_mapped(gateway.g.process.pid)
    answer = ollama.Client(host=gateway.g.url).generate(
        model=MODEL, prompt="Hi", options={"temperature": 0, "num_predict": 2})
    assert answer.done
    assert llama_cpp_mapped(gateway.a.process.pid)
    assert not llama_cpp_mapped(gateway.g.process.pid)


def test_nodes_endpoint_reports_each_upstream(gateway: Gateway) -> None:
    nodes = gateway.nodes()
    live, dead = nodes[gateway.a.url], nodes[gateway.dead_url]
    assert live["state"] == "up"
    assert live["kind"] == "homeport"
    assert live["models"] == 1
    assert live["round_trip_ms"] > 0
    assert live["in_flight"] == live["load"] == 0
    assert live["down_since"] is None
    assert dead["state"] == "down"
    assert dead["models"] == 0
    assert dead["down_since"]
    assert "connection" in dead["last_error"].lower()


def test_nodes_endpoint_rechecks_only_workers(gateway: Gateway) -> None:
    url = f"{gateway.g.url}/api/homeport/nodes"
    # A gateway runs no models, so it has no workers to probe: the answer is the usual one.
    checked = httpx.get(url, params={"recheck": "workers"}, timeout=10)
    assert checked.status_code == 200
    assert checked.json()["workers"] == []
    refused = httpx.get(url, params={"recheck": "upstreams"}, timeout=10)
    assert refused.status_code == 400
    assert "recheck" in refused.json()["error"]


def test_homeport_nodes_command_names_both_with_their_states(gateway: Gateway) -> None:
    result = homeport("nodes", "--endpoint", gateway.g.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "URL", "KIND", "STATE", "ROUND", "TRIP", "MODELS", "LOAD"]
    live = next(line for line in lines if gateway.a.url in line)
    dead = next(line for line in lines if gateway.dead_url in line)
    assert " up " in live
    assert " ms " in live
    assert "homeport" in live
    assert " down since " in dead
    assert "connection" in dead.lower()


def test_gateway_lists_and_serves_the_upstreams_model_with_no_engine(gateway: Gateway) -> None:
    tags = httpx.get(f"{gateway.g.url}/api/tags", timeout=10).json()["models"]
    assert [(model["name"], model["homeport"]["nodes"]) for model in tags] == [
        (MODEL, [f"127.0.0.1:{gateway.a.port}"])]  # the bundled model was not added here
    client = ollama.Client(host=gateway.g.url)
    answer = client.chat(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                         options={"temperature": 0, "seed": 42, "num_predict": 8})
    assert answer.message.content
    assert answer.done
    assert httpx.get(f"{gateway.g.url}/api/ps", timeout=10).status_code == 200
    # No engine started: no template renderer or runner process beside the server.
    assert gateway.g.process is not None
    process = psutil.Process(gateway.g.process.pid)
    assert process.children(recursive=True) == []
    print(f"\ngateway: started in {gateway.start_seconds:.2f}s, resident "
          f"{resident_bytes(process.pid) / 2**20:.1f} MiB "
          f"(upstream A: {resident_bytes(gateway.a.process.pid) / 2**20:.1f} MiB)"
          if gateway.a.process else "")


def test_gateway_refuses_a_model_it_would_have_to_run_itself(gateway: Gateway) -> None:
    response = httpx.post(f"{gateway.g.url}/api/generate", timeout=10,
                          json={"model": "nowhere:1b", "prompt": "Hi"})
    assert response.status_code == 404
    assert "--no-engine" in response.json()["error"]
    pinned = httpx.post(f"{gateway.g.url}/v1/chat/completions", timeout=10,
                        headers={"X-Homeport-Node": "local"},
                        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]})
    assert pinned.status_code == 404
    assert "--no-engine" in pinned.json()["error"]["message"]


def test_doctor_checks_each_upstream_and_fails_on_the_down_one(gateway: Gateway) -> None:
    live_name, dead_name = (f"127.0.0.1:{gateway.a.port}",
                            f"127.0.0.1:{gateway.dead_url.rsplit(':', 1)[1]}")
    result = homeport("doctor", "--no-measure", "--json", "--endpoint", gateway.g.url)
    assert result.returncode == 1, result.stderr
    checks = {check["name"]: check for check in json.loads(result.stdout)["checks"]}
    live, dead = checks[f"node {live_name}"], checks[f"node {dead_name}"]
    assert checks["node"] == {"name": "node", "status": "ok", "detail": (
        "the local node (this machine), a gateway: runs no models itself (--no-engine), "
        "routes to 2 upstreams")}
    assert live["status"] == "ok"
    assert live["detail"].startswith(f"up: {gateway.a.url}, homeport, 1 model, round trip ")
    assert dead["status"] == "fail"
    assert dead["detail"].startswith("down")
    assert gateway.dead_url in dead["detail"]
    assert "connect" in dead["detail"].lower()
    assert "remove it from the node's upstreams" in dead["detail"]
    # Only the down upstream fails: the server itself and its models are fine.
    assert [name for name, check in checks.items() if check["status"] == "fail"] == [
        f"node {dead_name}"]
    shown = homeport("doctor", "--no-measure", "--endpoint", gateway.g.url)
    assert shown.returncode == 1
    lines = shown.stdout.splitlines()
    assert any(f"node {live_name}" in line and "✓" in line for line in lines), shown.stdout
    assert any(f"node {dead_name}" in line and "✗" in line for line in lines), shown.stdout


def test_nvim_install_says_which_node_the_adapter_talks_to(gateway: Gateway, tmp_path: Path
                                                          ) -> None:
    result = homeport("nvim", "--path", str(tmp_path / "homeport.lua"), "--endpoint",
                      gateway.g.url)
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert (f"else to {gateway.g.url} (from --endpoint): the local node (this machine), a "
            "gateway: runs no models itself (--no-engine), routes to 2 upstreams.") in said
    gone = f"http://127.0.0.1:{free_port()}"
    result = homeport("nvim", "--path", str(tmp_path / "homeport.lua"), "--endpoint", gone)
    assert result.returncode == 0, result.stderr
    assert f"nothing answers at {gone} now: start the local node with `homeport serve`" in \
        " ".join(result.stderr.split())
