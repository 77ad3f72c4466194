"""Models placed on RPC workers, every part real: two ``homeport worker`` processes on loopback
serve their CPU over ggml's RPC, and a server named to them (HOMEPORT_RPC_WORKERS, with
HOMEPORT_SCHED_SPREAD so that a model that fits on one is still split) places the bundled SmolLM2's
layers across both and itself. ``num_gpu`` 20 offloads 20 of its 31 units (30 layers and the
output): 11 stay on the server's CPU, the 20 are split between the workers by their free memory.

These need llama.cpp built with -DGGML_RPC=on, which ``./dev`` always builds.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from homeport.engine import rpc
from homeport.engine.devices import Device
from homeport.engine.llama import ContextSettings
from homeport.engine.placement import model_needs, place
from homeport.errors import ConfigError
from homeport.net.binding import TailnetSight
from homeport.store.bundled import find_bundled_gguf
from homeport.store.gguf import read_gguf
from homeport.worker.listen import listen_address
from tests.conftest import MODEL
from tests.support.server import ServerProcess
from tests.support.waiting import wait_for
from tests.support.worker import WorkerProcess
from tests.test_cli_models import homeport
from tests.test_runners import runner_pids

UNITS, OFFLOADED = 31, 20
PROMPT = "Why is the sky blue? Answer in one sentence."
GREEDY = {"temperature": 0, "seed": 42, "num_predict": 24}
SPLIT = {**GREEDY, "num_gpu": OFFLOADED}
LOCAL = {**GREEDY, "num_gpu": 0}


def require_rpc() -> None:
    assert rpc.available(), "llama.cpp was built without RPC: `./dev setup` rebuilds it"


def server_env(*workers: WorkerProcess) -> dict[str, str]:
    return {"HOMEPORT_RPC_WORKERS": ",".join(worker.endpoint for worker in workers),
            "HOMEPORT_SCHED_SPREAD": "1", "HOMEPORT_CONTEXT_LENGTH": "1024",
            "HOMEPORT_NUM_PARALLEL": "1", "HOMEPORT_KEEP_ALIVE": "10m"}


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerProcess, ...]]:
    require_rpc()
    home = tmp_path_factory.mktemp("workers")
    with WorkerProcess(home / "a") as first, WorkerProcess(home / "b") as second:
        yield first, second


@pytest.fixture(scope="module")
def split_server(tmp_path_factory: pytest.TempPathFactory,
                 workers: tuple[WorkerProcess, ...]) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("rpc-server"), env=server_env(*workers)) as server:
        yield server


def generate(url: str, options: dict[str, Any]) -> dict[str, Any]:
    reply = httpx.post(f"{url}/api/generate", json={
        "model": MODEL, "prompt": PROMPT, "stream": False, "options": options}, timeout=600)
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


def connected_ports(pid: int) -> set[int]:
    return {conn.raddr.port for conn in psutil.Process(pid).net_connections(kind="tcp")
            if conn.raddr and conn.status == psutil.CONN_ESTABLISHED}


def machines(url: str) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """The model's /api/ps entry and its (machine, layers) shares."""
    running = httpx.get(f"{url}/api/ps", timeout=30).json()["models"]
    entry = next(model for model in running if model["name"] == MODEL)
    shares = [(share["machine"], share["layers"]) for share in entry["homeport"]["machines"]]
    return entry, shares


def test_layers_are_placed_across_both_workers_and_the_server(
        split_server: ServerProcess, workers: tuple[WorkerProcess, ...]) -> None:
    first, second = workers
    before = first.accepted(), second.accepted()
    assert generate(split_server.url, SPLIT)["response"].strip()
    entry, shares = machines(split_server.url)
    assert [machine for machine, _ in shares] == ["local", first.endpoint, second.endpoint]
    layers = dict(shares)
    assert layers["local"] == UNITS - OFFLOADED
    assert layers[first.endpoint] > 0
    assert layers[second.endpoint] > 0
    assert layers[first.endpoint] + layers[second.endpoint] == OFFLOADED
    assert entry["size_vram"] == 0  # none of it in this machine's GPU memory
    assert all(share["size"] > 0 for share in entry["homeport"]["machines"])
    assert sum(share["size"] for share in entry["homeport"]["machines"]) == entry["size"]
    # The runner really holds the model there: ggml's servers behind the gates took
    # connections, and the loaded runner keeps one open to each worker.
    assert first.accepted() > before[0]
    assert second.accepted() > before[1]
    assert {first.port, second.port} <= connected_ports(runner_pids(split_server)[MODEL])
    assert re.search(rf"placing {re.escape(MODEL)}: {OFFLOADED}/{UNITS} layers on workers: "
                     rf"RPC0 on {re.escape(first.endpoint)} \d+ layers .*RPC1 on "
                     rf"{re.escape(second.endpoint)} \d+ layers", split_server.log())
    shown = homeport("ps", endpoint=split_server.url)
    assert shown.returncode == 0, shown.stderr
    assert "MACHINES" in shown.stdout
    row = next(line for line in shown.stdout.splitlines() if MODEL in line)
    assert re.search(rf"local \d+%, {re.escape(first.endpoint)} \d+%, "
                     rf"{re.escape(second.endpoint)} \d+%", row), row


def test_greedy_answers_match_a_local_only_load(split_server: ServerProcess) -> None:
    split = generate(split_server.url, SPLIT)["response"]
    local = generate(split_server.url, LOCAL)["response"]  # num_gpu 0: reloaded on the CPU
    assert machines(split_server.url)[1] == [("local", UNITS)]
    assert split.strip()
    assert split == local
    assert generate(split_server.url, SPLIT)["response"] == split  # and back on the workers


def test_a_worker_killed_mid_stream_ends_the_stream_and_the_next_load_goes_without_it(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    require_rpc()
    home = tmp_path_factory.mktemp("rpc-kill")
    with WorkerProcess(home / "a") as first, WorkerProcess(home / "b") as doomed, \
            ServerProcess(home / "server", env=server_env(first, doomed)) as server, \
            httpx.Client(base_url=server.url, timeout=600) as http:
        body = {"model": MODEL, "prompt": "Count from one to a thousand in words.",
                "options": {**SPLIT, "num_predict": 400}}
        with http.stream("POST", "/api/generate", json=body) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            for _ in range(3):
                assert json.loads(next(lines))["done"] is False
            doomed.kill()
            last = [json.loads(line) for line in lines if line][-1]
        assert "runner stopped unexpectedly" in last["error"], last
        assert MODEL in last["error"]
        assert "RPC" in last["error"]  # llama.cpp's abort message, passed on
        assert server.alive()
        # The next request loads the model again, on what is left.
        assert generate(server.url, SPLIT)["response"].strip()
        assert machines(server.url)[1] == [("local", UNITS - OFFLOADED),
                                           (first.endpoint, OFFLOADED)]
        assert f"RPC worker {doomed.endpoint} is unreachable" in server.log()
    assert not server.alive()


def host_bytes(on_worker: bool) -> int:
    """The server's host share of the bundled model at its test settings, with a roomy worker
    taking every layer, or alone (the same estimate the server makes)."""
    path = find_bundled_gguf()
    assert path is not None
    needs = model_needs(read_gguf(path), ContextSettings(n_ctx_per_seq=1024, n_seq=1))
    cpu = Device("CPU", "cpu", 1 << 40, 1 << 40)
    roomy = Device("RPC0", "gpu", 1 << 40, 1 << 40, "w:1", "w:1")
    return place(needs, [cpu, roomy] if on_worker else [cpu]).host_bytes


def test_a_model_too_big_for_this_machine_runs_on_a_worker_until_it_dies(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    # A memory limit between the host share with a worker and without: only a worker makes
    # room, and with num_gpu unset the server uses it because it must.
    require_rpc()
    limit = (host_bytes(on_worker=True) + host_bytes(on_worker=False)) // 2
    home = tmp_path_factory.mktemp("rpc-fit")
    env = {**server_env(), "HOMEPORT_SCHED_SPREAD": "", "HOMEPORT_MEMORY_LIMIT": str(limit)}
    with WorkerProcess(home / "worker") as lender:
        env["HOMEPORT_RPC_WORKERS"] = lender.endpoint
        with ServerProcess(home / "server", env=env) as server:
            assert generate(server.url, GREEDY)["response"].strip()
            assert machines(server.url)[1] == [("local", 0), (lender.endpoint, UNITS)]
            assert "this machine alone would need" in server.log()
            lender.kill()
            # The idle runner sees its worker's connection close and ends: the model leaves.
            assert wait_for(lambda: not httpx.get(f"{server.url}/api/ps").json()["models"],
                            timeout=60), server.log()[-3000:]
            assert "closed its connection" in server.log()
            reply = httpx.post(f"{server.url}/api/generate", json={
                "model": MODEL, "prompt": PROMPT, "stream": False, "options": GREEDY},
                timeout=600)
            assert reply.status_code == 400, reply.text
            assert "of host memory" in reply.json()["error"]
            assert f"RPC worker {lender.endpoint} is unreachable" in server.log()
            assert server.alive()


@pytest.mark.parametrize("text", ["0.0.0.0:50052", "[::]:50052", "192.168.1.20:50052",
                                  "[::1]:50052", "100.80.9.9:50052", "worker.lan:50052"])
def test_the_worker_refuses_wide_lan_and_foreign_addresses(text: str) -> None:
    sight = TailnetSight(addresses=(ipaddress.ip_address("100.80.1.1"),))
    with pytest.raises(ConfigError):
        listen_address(text, sight)


def test_the_worker_listens_on_loopback_or_its_tailnet_address() -> None:
    sight = TailnetSight(addresses=(ipaddress.ip_address("100.80.1.1"),))
    assert listen_address("127.0.0.1:6000", sight).endpoint == "127.0.0.1:6000"
    assert listen_address("100.80.1.1:6000", sight).endpoint == "100.80.1.1:6000"
    assert listen_address(None, sight).endpoint == "100.80.1.1:50052"
    userspace = TailnetSight(addresses=sight.addresses, userspace=True)
    assert listen_address(None, userspace).endpoint == "127.0.0.1:50052"
    with pytest.raises(ConfigError, match="no tailnet address"):
        listen_address(None, TailnetSight(reason="tailscaled is not running"))


def test_worker_command_refuses_every_interface(tmp_path: Path) -> None:
    result = homeport("worker", "--listen", "0.0.0.0:50052", endpoint=None)
    assert result.returncode == 1
    assert "refusing to listen on 0.0.0.0" in result.stderr


def test_rpc_workers_setting_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from homeport import config

    monkeypatch.setenv("HOMEPORT_RPC_WORKERS", " 100.64.0.7:50052, Box.local:6000,100.64.0.7:50052")
    assert config.RPC_WORKERS.get() == ("100.64.0.7:50052", "box.local:6000")
    for bad in ("[fd7a:115c:a1e0::1]:50052", "100.64.0.7", "100.64.0.7:0", "100.64.0.7:70000",
                "a b:1", "x" * 300 + ":1",
                ",".join(f"10.0.0.{n}:50052" for n in range(config.MAX_RPC_WORKERS + 1))):
        monkeypatch.setenv("HOMEPORT_RPC_WORKERS", bad)
        assert config.RPC_WORKERS.lookup() == ((), "default"), bad  # warned, none used
