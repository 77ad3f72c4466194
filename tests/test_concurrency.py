"""Many clients at once: streams stay whole and unmixed; a departed client frees its slot."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.conftest import MODEL
from tests.support.metrics import value
from tests.support.server import ServerProcess
from tests.support.waiting import wait_for

PROMPTS = [
    "Write a haiku about ports.", "Name three rivers in Europe.", "What is 2+2? Explain.",
    "Describe a cat in one sentence.", "Give me a tip for writing Python.",
    "What colour is the sky at noon?", "Suggest a name for a boat.", "Say something kind.",
]
OPTIONS = {"temperature": 0, "seed": 11, "num_predict": 48}


def test_eight_streams_at_once_are_whole_and_unmixed(base_url: str) -> None:
    # Each answer alone, and then all eight together, start from a freshly loaded model: batching
    # is the only difference. (A cache filled in another order lays the KV cells out differently,
    # which changes floating point sums; that is a separate effect, not what this test is about.)
    client = ollama.Client(host=base_url)
    client.generate(MODEL, prompt="", keep_alive=0)
    alone = [client.generate(MODEL, prompt=p, options=OPTIONS, keep_alive=0).response
             for p in PROMPTS]

    async def stream(http: httpx.AsyncClient, prompt: str) -> tuple[str, dict[str, object]]:
        parts = []
        final: dict[str, object] = {}
        async with http.stream("POST", "/api/generate", json={
                "model": MODEL, "prompt": prompt, "options": OPTIONS}) as reply:
            assert reply.status_code == 200
            async for line in reply.aiter_lines():
                if line:
                    item = json.loads(line)
                    assert "error" not in item, item
                    parts.append(item["response"])
                    final = item
        return "".join(parts), final

    async def together() -> list[tuple[str, dict[str, object]]]:
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
            return await asyncio.gather(*(stream(http, prompt) for prompt in PROMPTS))

    results = asyncio.run(together())
    for prompt, expected, (text, final) in zip(PROMPTS, alone, results, strict=True):
        assert final.get("done") is True, prompt
        assert text == expected, f"stream for {prompt!r} differs from its answer alone"


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with a single slot, so any leaked slot would block the next request."""
    with ServerProcess(tmp_path_factory.mktemp("one-slot"),
                       env={"HOMEPORT_NUM_PARALLEL": "1",
                            "HOMEPORT_CONTEXT_LENGTH": "2048"}) as process:
        yield process


def _busy_slots(url: str) -> int:
    models = httpx.get(f"{url}/api/ps", timeout=10).json()["models"]
    return sum(model["slots"]["busy"] for model in models)



# Greedy decoding makes this small model repeat itself until the context is full (checked: 4,500
# tokens of "A lone soul" without an end-of-generation token): a stream that does not end.
# Which prompt does that depends on the kernels' last bits (a haiku about ports did with flash
# attention and ends after 34 tokens without). Without drafts (draft_num_predict 0): speculation
# would take the repetition many tokens a step and fill the context in seconds.
ENDLESS = {"model": MODEL, "messages": [{"role": "user", "content": "Write a haiku about the sea"}],
           "options": {"temperature": 0, "seed": 1, "num_predict": -1, "draft_num_predict": 0}}


def test_disconnect_mid_stream_frees_the_slot(one_slot: ServerProcess) -> None:
    url = one_slot.url
    with httpx.Client(base_url=url, timeout=60) as http:
        http.post("/api/generate", json={"model": MODEL, "prompt": "", "keep_alive": "10m"})
        with http.stream("POST", "/api/chat", json=ENDLESS) as reply:
            lines = reply.iter_lines()
            for _ in range(5):
                assert json.loads(next(lines))["done"] is False
            assert _busy_slots(url) == 1
        # the response is closed: the server must notice and free the slot within a step or two
        assert wait_for(lambda: _busy_slots(url) == 0, timeout=5), "slot still busy"
        generated = value(url, "homeport_generated_tokens_total", model=MODEL)
        time.sleep(0.5)
        assert value(url, "homeport_generated_tokens_total", model=MODEL) == generated
        # The only slot is free again: the next request runs at once instead of waiting behind it.
        reply = http.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False,
                                                 "options": {"num_predict": 8}})
        assert reply.status_code == 200
        assert reply.json()["done"]


def test_queued_request_whose_client_left_never_runs(one_slot: ServerProcess) -> None:
    url = one_slot.url
    first_tokens = "homeport_time_to_first_token_seconds_count"
    with httpx.Client(base_url=url, timeout=60) as http:
        before = value(url, first_tokens, model=MODEL)
        with http.stream("POST", "/api/chat", json=ENDLESS) as running:
            running_lines = running.iter_lines()
            next(running_lines)
            # A second request queues behind the only slot; its client gives up while it waits.
            with httpx.Client(base_url=url, timeout=60) as other, \
                    other.stream("POST", "/api/generate", json={
                        "model": MODEL, "prompt": "queued prompt", "options": {"num_predict": 4}
                    }) as queued:
                assert queued.status_code == 200
                assert wait_for(lambda: value(url, "homeport_queue_depth") == 1, timeout=5)
            assert wait_for(lambda: value(url, "homeport_queue_depth") == 0, timeout=5)
        assert wait_for(lambda: _busy_slots(url) == 0, timeout=5)
        # Only the first request ever produced a token.
        assert value(url, first_tokens, model=MODEL) == before + 1


def test_queue_full_is_503_with_retry_after(tmp_path: Path) -> None:
    # A long context keeps the endless stream going for the whole test, even on a fast machine.
    env = {"HOMEPORT_NUM_PARALLEL": "1", "HOMEPORT_MAX_QUEUE": "1",
           "HOMEPORT_CONTEXT_LENGTH": "8192"}
    with ServerProcess(tmp_path / "queue", env=env) as process, \
            httpx.Client(base_url=process.url, timeout=60) as http, \
            http.stream("POST", "/api/chat", json=ENDLESS) as running:
        # Keep the line iterator: a discarded httpx iterator closes the response, ending the stream.
        running_lines = running.iter_lines()
        next(running_lines)
        with httpx.Client(base_url=process.url, timeout=60) as second, \
                second.stream("POST", "/api/chat", json=ENDLESS) as waiting:
            assert waiting.status_code == 200
            assert wait_for(lambda: value(process.url, "homeport_queue_depth") == 1, timeout=30)
            third = httpx.post(f"{process.url}/api/chat", timeout=60, json={
                "model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
            assert third.status_code == 503
            assert int(third.headers["retry-after"]) >= 1
            assert "server busy" in third.json()["error"]
