"""``homeport doctor`` against the real server, an unreachable one, a fake that wants a token, and
a server with two RPC workers configured: a real ``homeport worker`` and a port where nothing
listens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from homeport.client.doctor import feel, parameter_billions
from homeport.config import config_file
from tests.conftest import MODEL
from tests.support.cli import homeport
from tests.support.fake_ollama import FakeOllama, _now, pieces
from tests.support.server import ServerProcess, free_port
from tests.support.waiting import wait_for
from tests.support.worker import WorkerProcess
from tests.test_rpc import require_rpc


def doctor(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    result = homeport("doctor", "--json", *args, env=env)
    return result.returncode, json.loads(result.stdout)


def checks(report: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {check["name"]: (check["status"], check["detail"]) for check in report["checks"]}


def test_against_the_real_server(base_url: str) -> None:
    config_file().parent.mkdir(parents=True, exist_ok=True)
    config_file().write_text(f'[adapters.ollama]\nmodel = "{MODEL}"\n')
    code, report = doctor("--endpoint", base_url)
    assert code == 0
    found = checks(report)
    assert found["endpoint"] == ("ok", f"{base_url} (from --endpoint)")
    assert found["server"][0] == "ok"
    assert found["server"][1].startswith("homeport ")
    assert found["access"] == ("ok", "no token needed")
    assert found["models"][0] == "ok"
    assert MODEL in found["models"][1]
    assert found["ollama model"][0] == "ok"
    assert found["anthropic"][0] == "warn"
    assert found["latency"][0] == "ok"
    network = report["network"]
    assert 1 <= len(network["rtt_ms"]) <= 10
    assert all(rtt > 0 for rtt in network["rtt_ms"])
    assert network["server_tps"] > 0
    assert network["received_tps"] > 0
    assert network["first_token_ms"] > 0
    assert 50 < network["bytes_per_token"] < 1000
    sizes = network["sizes"]
    assert [size["billions"] for size in sizes] == [1, 3, 8, 14, 32, 70]
    rates = [size["tokens_per_second"] for size in sizes]
    assert rates == sorted(rates, reverse=True)
    assert all(size["feel"] == feel(size["tokens_per_second"]) for size in sizes)


def test_unreachable_fails_with_the_endpoint_and_its_source() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, report = doctor(env={"OLLAMA_HOST": url})
    assert code == 1
    status, detail = checks(report)["server"]
    assert status == "fail"
    assert detail.startswith(f"could not reach a server at {url} (from OLLAMA_HOST)")
    assert report["network"] is None


def test_a_server_that_wants_a_token() -> None:
    with FakeOllama() as fake:
        fake.token = "hp_right"
        code, report = doctor("--no-measure", "--endpoint", fake.url)
        assert code == 1
        status, detail = checks(report)["access"]
        assert status == "fail"
        assert "answered 401" in detail
        assert "set HOMEPORT_TOKEN" in detail
        _, report = doctor("--no-measure", "--endpoint", fake.url,
                           env={"HOMEPORT_TOKEN": "hp_right"})
        assert checks(report)["access"] == ("ok", "token accepted (from HOMEPORT_TOKEN)")


def test_a_slow_link_caps_the_estimates() -> None:
    """The fake server claims to generate instantly, but its chunks arrive ~100 a second."""
    with FakeOllama() as fake:
        fake.reply = " ".join(f"n{number}" for number in range(40))
        fake.delay = 0.01
        _, report = doctor("--endpoint", fake.url)
    network = report["network"]
    assert network["link_keeps_up"] is False
    assert checks(report)["streaming"][0] == "warn"
    assert "the link is the bottleneck" in checks(report)["streaming"][1]
    assert network["received_tps"] < network["server_tps"]
    for size in network["sizes"]:
        assert size["tokens_per_second"] == pytest.approx(network["received_tps"])


def test_bytes_per_token_are_the_bytes_of_each_line() -> None:
    """Measured on the wire: the fake escapes non-ASCII text (\\u00e9: six bytes for one letter)."""
    with FakeOllama() as fake:
        fake.reply = "café naïve déjà vu — 東京 ok"
        _, report = doctor("--endpoint", fake.url)
    lines = [json.dumps({"model": "fake-coder:latest", "created_at": _now(),
                         "message": {"role": "assistant", "content": piece}, "done": False})
             for piece in pieces(fake.reply)]
    expected = sum(len(line) + 1 for line in lines) / len(lines)
    assert report["network"]["bytes_per_token"] == pytest.approx(expected, abs=0.5)


def test_the_anthropic_key_of_the_adapter_each_strategy_uses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The default adapter's own key counts; an adapter chosen in the config never gives way."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    config_file().parent.mkdir(parents=True, exist_ok=True)
    with FakeOllama() as fake:
        config_file().write_text('[adapters.anthropic_haiku]\napi_key = "env:HAIKU_KEY"\n')
        _, report = doctor("--no-measure", "--endpoint", fake.url,
                           env={"HAIKU_KEY": "sk-ant-haiku"})
        assert checks(report)["anthropic"] == (
            "ok", f"anthropic_haiku API key set (from {config_file()} "
                  "(adapters.anthropic_haiku.api_key = env:HAIKU_KEY))")

        config_file().write_text('[strategies.chat]\nadapter = "anthropic"\n')
        code, report = doctor("--no-measure", "--endpoint", fake.url)
        assert code == 1
        status, detail = checks(report)["anthropic"]
        assert status == "fail"
        assert detail.startswith(f"chat uses anthropic (from {config_file()} (strategies.chat)), "
                                 "which has no API key")
        assert "no Anthropic API key, so inline uses the ollama adapter" in detail
        assert "chat uses the ollama adapter" not in detail


def test_each_rpc_worker_and_whether_the_server_last_found_it_accepting(tmp_path: Path) -> None:
    require_rpc()
    with WorkerProcess(tmp_path / "worker") as worker:
        silent = f"127.0.0.1:{free_port()}"
        env = {"HOMEPORT_RPC_WORKERS": f"{worker.endpoint},{silent}"}
        with ServerProcess(tmp_path / "server", env=env) as server:
            def probed() -> bool:
                listed = httpx.get(f"{server.url}/api/homeport/nodes", timeout=10).json()
                return all(item["reachable"] is not None for item in listed["workers"])

            # The server probes its configured workers as it starts.
            assert wait_for(probed), server.log()[-3000:]
            code, report = doctor("--no-measure", "--endpoint", server.url)
            assert code == 0  # a worker that does not accept warns; loads go without it
            found = checks(report)
            status, detail = found[f"worker {worker.endpoint}"]
            assert status == "ok"
            assert detail.startswith("configured, accepting connections (checked ")
            status, detail = found[f"worker {silent}"]
            assert status == "warn"
            assert detail.startswith("configured, not accepting connections (checked ")
            assert "not seen accepting since the node started" in detail
            assert "start `homeport worker` on that machine, or check that its policy allows " \
                   "this node" in detail
            assert f"RPC worker {silent} (configured) does not accept connections" in server.log()
            assert f"RPC worker {worker.endpoint} (configured) does not" not in server.log()
            names = [check["name"] for check in report["checks"]]
            assert names.index(f"worker {worker.endpoint}") + 1 == names.index(f"worker {silent}")

            # A worker started on the silent address since: the server's own next probe is a
            # backoff (30 s at least) away, but doctor has it probed again first.
            host, _, port = silent.rpartition(":")
            with WorkerProcess(tmp_path / "late", host=host, port=int(port)):
                code, report = doctor("--no-measure", "--endpoint", server.url)
                status, detail = checks(report)[f"worker {silent}"]
                assert status == "ok", detail
                assert detail.startswith("configured, accepting connections (checked just now")
                assert f"RPC worker {silent} (configured) accepts connections again" in server.log()


@pytest.mark.parametrize(("text", "billions"), [("134.52M", 0.13452), ("7.2B", 7.2),
                                                 ("70B", 70.0), ("", 0.0), ("big", 0.0)])
def test_parameter_sizes(text: str, billions: float) -> None:
    assert parameter_billions(text) == pytest.approx(billions)
