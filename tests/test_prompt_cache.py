"""More conversations than slots: a conversation pushed out of its slot is kept in RAM and, when it
returns, evaluates only its new tokens and answers as it would have; the cache keeps its budget
and counts in the model's memory estimate.

One slot, so every other conversation pushes the first one out. Without flash attention, where
llama.cpp's results do not depend on how tokens were batched (see tests/test_speculation.py).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from homeport.engine.prompt_cache import common_prefix
from tests.conftest import MODEL
from tests.support.metrics import value
from tests.support.models import GEMMA, WITH_GEMMA
from tests.support.server import ServerProcess
from tests.test_speculation import GEMMA_EDIT

BUDGET = 24 * 1024**2  # one ~700-token SmolLM2 state (about 16 MiB), not two
SOURCE = (Path(__file__).resolve().parents[1] / "src" / "homeport" / "engine" / "scheduler.py"
          ).read_text()
OPTIONS = {"temperature": 0, "num_predict": 24}


def _server(tmp_path_factory: pytest.TempPathFactory, budget: int) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp(f"prompt-cache-{budget}"),
                            env={"HOMEPORT_CONTEXT_LENGTH": "2048", "HOMEPORT_NUM_PARALLEL": "1",
                                 "HOMEPORT_FLASH_ATTENTION": "false",
                                 "HOMEPORT_CACHE_RAM": str(budget)})
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _server(tmp_path_factory, BUDGET)


@pytest.fixture(scope="module")
def uncached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _server(tmp_path_factory, 0)


def _conversation(index: int) -> list[dict[str, str]]:
    attached = SOURCE[index * 2500:index * 2500 + 2400]
    return [{"role": "system", "content": f"You review code. The user attached:\n{attached}"},
            {"role": "user", "content": "What does this code do?"}]


def _chat(http: httpx.Client, messages: list[dict[str, str]]) -> dict[str, Any]:
    reply = http.post("/api/chat", json={"model": MODEL, "messages": messages,
                                         "stream": False, "options": OPTIONS})
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


def test_a_returning_conversation_evaluates_only_its_new_tokens(cached: ServerProcess) -> None:
    with httpx.Client(base_url=cached.url, timeout=600) as http:
        first = _conversation(0)
        answer = _chat(http, first)
        _chat(http, _conversation(1))  # takes the only slot: the first is saved
        again = [*first, answer["message"],
                 {"role": "user", "content": "And what is a slot?"}]
        returned = _chat(http, again)
        http.post("/api/generate", json={"model": MODEL, "keep_alive": 0})
        fresh = _chat(http, again)  # a new runner: nothing cached
    assert returned["message"]["content"] == fresh["message"]["content"]
    assert fresh["prompt_eval_count"] > 500
    assert returned["prompt_eval_count"] < 100
    assert value(cached.url, "homeport_prompt_cache_total", model=MODEL, event="restored") >= 1


def test_the_cache_keeps_its_budget_and_counts_in_the_memory_estimate(
        cached: ServerProcess, uncached: ServerProcess) -> None:
    sizes = []
    for server in (cached, uncached):
        with httpx.Client(base_url=server.url, timeout=600) as http:
            for index in range(4):
                _chat(http, _conversation(index))
            held = value(server.url, "homeport_prompt_cache_bytes", model=MODEL)
            assert 0 <= held <= BUDGET
            if server is cached:
                assert held > 0
            (loaded,) = http.get("/api/ps").json()["models"]
            sizes.append(loaded["size"])
    assert sizes[0] - sizes[1] == BUDGET


def test_a_sliding_window_state_is_restored_only_to_go_on_from_its_end(tmp_path: Path) -> None:
    """Gemma 3 attends through a sliding window in most of its layers, and llama.cpp saves only
    the window's cells before a sequence's last position: a state cut back further would answer
    from a window with holes (a copy of code restored and cut from 1,370 to 770 tokens answered
    with a run of "[" lines). Such a state is restored only for a prompt that goes on from its
    end; any other prompt is evaluated again, and answers the same."""
    server = ServerProcess(tmp_path, env={"HOMEPORT_CONTEXT_LENGTH": "2048",
                                          "HOMEPORT_NUM_PARALLEL": "1",
                                          "HOMEPORT_FLASH_ATTENTION": "false", **WITH_GEMMA})
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=600) as http:

            def generate(**body: Any) -> dict[str, Any]:
                reply = http.post("/api/generate", json={"model": GEMMA, "stream": False,
                                                         "raw": True, **body})
                assert reply.status_code == 200, reply.text
                answer: dict[str, Any] = reply.json()
                return answer

            def push_out() -> None:  # another conversation takes the only slot
                generate(prompt="Rivers of Europe:", options=OPTIONS)

            def events(event: str) -> float:
                return value(server.url, "homeport_prompt_cache_total", model=GEMMA,
                             event=event)

            first = generate(**GEMMA_EDIT)
            push_out()
            assert events("saved") >= 1  # the copy's state is kept...
            again = generate(**GEMMA_EDIT)  # ...but it shares only 770 of its 1,370 tokens
            assert events("restored") == 0
            assert again["response"] == first["response"]
            # evaluated again, all but the first token, which the slot still shares
            assert again["prompt_eval_count"] >= first["prompt_eval_count"] - 1
    finally:
        server.stop()


@pytest.mark.parametrize("seed", range(5))
def test_the_shared_prefix_is_counted_as_one_token_at_a_time_would(seed: int) -> None:
    """``common_prefix`` halves ranges of slices; it must agree with the plain loop everywhere,
    lists against tuples included (the kept states' tokens are tuples)."""
    def one_at_a_time(a: list[int], b: list[int]) -> int:
        index = 0
        while index < min(len(a), len(b)) and a[index] == b[index]:
            index += 1
        return index

    chooser = random.Random(seed)
    for _ in range(2000):
        first = [chooser.randint(0, 3) for _ in range(chooser.randint(0, 40))]
        second = (first[:chooser.randint(0, len(first))]
                  + [chooser.randint(0, 3) for _ in range(chooser.randint(0, 12))])
        expected = one_at_a_time(first, second)
        assert common_prefix(first, second) == expected
        assert common_prefix(tuple(second), first) == expected
