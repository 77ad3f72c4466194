"""Each loaded model runs in its own runner process: a runner that dies takes only its own requests
with it, and a server that dies takes its runners with it."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.conftest import MODEL
from tests.support.metrics import value
from tests.support.models import distinct_copy, install_model
from tests.support.server import ServerProcess
from tests.support.waiting import wait_for

OTHER = "alpha:latest"
# Greedy decoding makes this small model repeat itself until the context is full (over 4000
# tokens): a stream that is still running whenever the test kills its runner (without drafts,
# which would take the repetition many tokens a step).
ENDLESS_OPTIONS = {"temperature": 0, "seed": 1, "num_predict": -1, "draft_num_predict": 0}
BOUNDED_OPTIONS = {"temperature": 0, "seed": 1, "num_predict": 24}


def runner_pids(server: ServerProcess) -> dict[str, int]:
    """The server's runner processes by model name (from their command lines)."""
    assert server.process is not None
    found = {}
    for child in psutil.Process(server.process.pid).children():
        try:
            command = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "homeport.engine.runner_main" in command:
            found[command[command.index("--model") + 1]] = child.pid
    return found


def gone(pid: int) -> bool:
    """No such process, or only its exit status left for a parent that is itself gone."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True



def loaded(url: str) -> dict[str, dict[str, object]]:
    return {m["name"]: m for m in httpx.get(f"{url}/api/ps", timeout=10).json()["models"]}


def chat_body(model: str, options: dict[str, object], **fields: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "Write a haiku about the sea"}],
            "options": options, **fields}


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("runners")
    files = home / "files"
    files.mkdir()
    install_model(home / "data" / "models", OTHER, distinct_copy(files, "alpha"))
    env = {"HOMEPORT_NUM_PARALLEL": "2", "HOMEPORT_CONTEXT_LENGTH": "8192",
           "HOMEPORT_KEEP_ALIVE": "10m"}
    with ServerProcess(home, env=env) as process:
        yield process


def test_a_killed_runner_ends_its_stream_and_the_other_model_keeps_serving(
        two_models: ServerProcess) -> None:
    url = two_models.url
    with httpx.Client(base_url=url, timeout=120) as http:
        # keep_alive 0: the stream below starts from a freshly loaded model too.
        alone = http.post("/api/chat", json=chat_body(OTHER, BOUNDED_OPTIONS, stream=False,
                                                      keep_alive=0))
        assert alone.status_code == 200, alone.text
        with http.stream("POST", "/api/chat", json=chat_body(MODEL, ENDLESS_OPTIONS)) as doomed, \
                http.stream("POST", "/api/chat", json=chat_body(OTHER, BOUNDED_OPTIONS)) as other:
            doomed_lines = doomed.iter_lines()
            for _ in range(3):
                assert json.loads(next(doomed_lines))["done"] is False
            other_lines = other.iter_lines()
            other_records = [json.loads(next(other_lines))]
            pids = runner_pids(two_models)
            assert set(pids) == {MODEL, OTHER}
            psutil.Process(pids[MODEL]).kill()

            last = [json.loads(line) for line in doomed_lines if line][-1]
            assert "runner stopped unexpectedly" in last["error"]
            assert MODEL in last["error"]
            assert "/" not in last["error"].replace(MODEL, "")  # no paths
            other_records += [json.loads(line) for line in other_lines if line]
        # The killed runner is reaped and forgotten; the other model's stream went on whole.
        assert gone(pids[MODEL])
        assert MODEL not in loaded(url)
        assert OTHER in loaded(url)
        assert other_records[-1]["done"] is True
        assert "error" not in other_records[-1]
        text = "".join(record["message"]["content"] for record in other_records)
        assert text == alone.json()["message"]["content"]
        assert runner_pids(two_models)[OTHER] == pids[OTHER]
        # Its gauges went with it: nothing is left counted as busy for the dead runner.
        assert value(url, "homeport_busy_slots", model=MODEL) == 0

        again = http.post("/api/chat", json=chat_body(MODEL, BOUNDED_OPTIONS, stream=False))
        assert again.status_code == 200, again.text
        assert again.json()["load_duration"] > 0
        assert again.json()["message"]["content"]
        assert runner_pids(two_models)[MODEL] != pids[MODEL]
    assert two_models.alive()


def test_every_request_waiting_in_a_killed_runners_queue_gets_an_error(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    env = {"HOMEPORT_NUM_PARALLEL": "1", "HOMEPORT_CONTEXT_LENGTH": "8192"}
    with ServerProcess(tmp_path_factory.mktemp("queue"), env=env) as server:
        url = server.url

        async def streamed(http: httpx.AsyncClient, started: asyncio.Event | None) -> str:
            async with http.stream("POST", "/api/chat",
                                   json=chat_body(MODEL, ENDLESS_OPTIONS)) as reply:
                assert reply.status_code == 200
                last: dict[str, object] = {}
                async for line in reply.aiter_lines():
                    if line:
                        last = json.loads(line)
                        if started is not None:
                            started.set()
                return str(last.get("error", ""))

        async def whole(http: httpx.AsyncClient) -> tuple[int, str]:
            reply = await http.post("/api/chat", json=chat_body(MODEL, ENDLESS_OPTIONS,
                                                                stream=False))
            return reply.status_code, str(reply.json().get("error", ""))

        async def scenario() -> tuple[list[str], tuple[int, str]]:
            async with httpx.AsyncClient(base_url=url, timeout=120) as http:
                started = asyncio.Event()
                running = asyncio.create_task(streamed(http, started))
                await started.wait()
                waiting = [asyncio.create_task(streamed(http, None)) for _ in range(3)]
                waiting_whole = asyncio.create_task(whole(http))
                queued = await asyncio.to_thread(
                    wait_for, lambda: loaded(url)[MODEL]["queued"] == 4)
                assert queued, "the requests never queued"
                psutil.Process(runner_pids(server)[MODEL]).kill()
                errors = await asyncio.wait_for(asyncio.gather(running, *waiting), timeout=60)
                return errors, await asyncio.wait_for(waiting_whole, timeout=60)

        errors, (status, whole_error) = asyncio.run(scenario())
        assert all("runner stopped unexpectedly" in error for error in errors), errors
        assert status == 500
        assert "runner stopped unexpectedly" in whole_error
        assert value(url, "homeport_queue_depth") == 0
        assert loaded(url) == {}
        reply = httpx.post(f"{url}/api/generate", timeout=120, json={
            "model": MODEL, "prompt": "hi", "stream": False, "options": BOUNDED_OPTIONS})
        assert reply.status_code == 200


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_no_runner_outlives_its_server(tmp_path_factory: pytest.TempPathFactory,
                                       sig: signal.Signals) -> None:
    with ServerProcess(tmp_path_factory.mktemp("killed"),
                       env={"HOMEPORT_CONTEXT_LENGTH": "2048"}) as server:
        reply = httpx.post(f"{server.url}/api/generate", timeout=120,
                           json={"model": MODEL, "prompt": "", "keep_alive": "10m"})
        assert reply.status_code == 200
        pid = runner_pids(server)[MODEL]
        assert not gone(pid)
        server.stop(sig)
        assert wait_for(lambda: gone(pid), timeout=30), "the runner outlived its server"
        if sig == signal.SIGTERM:  # a clean stop, not a death the server had to handle
            assert "unloaded smollm2:135m" in server.log()
            assert "exited unexpectedly" not in server.log()
