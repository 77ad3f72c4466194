"""One system prompt for every editor: a request that shares a long prefix with another slot's
cache starts from a copy of its cells, evaluates only its own tokens, and answers as it would alone.

The server runs without flash attention, where llama.cpp's results do not depend on how tokens
were batched (see tests/test_speculation.py), so "as it would alone" can be asserted exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL
from tests.support.metrics import value
from tests.support.server import ServerProcess

SYSTEM = ("You are a careful coding assistant. The user attached this file:\n"
          + (Path(__file__).resolve().parents[1] / "src" / "homeport" / "engine"
             / "drafting.py").read_text()[:2400])
SYSTEM_MESSAGE = {"role": "system", "content": SYSTEM}
QUESTION = {"model": MODEL, "stream": False, "options": {"temperature": 0, "num_predict": 32},
            "messages": [SYSTEM_MESSAGE,
                         {"role": "user", "content": "What does NGRAM mean here?"}]}
# The request holding the other slot: its answer must be a JSON string of at least 900 characters,
# so it is certainly still running when the question arrives after its first token.
HOLDER = {"model": MODEL, "stream": True, "options": {"temperature": 0, "num_predict": 400},
          "format": {"type": "string", "minLength": 900},
          "messages": [{"role": "system", "content": SYSTEM},
                       {"role": "user", "content": "Explain the whole file at length."}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("prefix-copy"),
                            env={"HOMEPORT_CONTEXT_LENGTH": "2048",
                                 "HOMEPORT_FLASH_ATTENTION": "false"})
    process.start()
    yield process
    process.stop()


def _ask(http: httpx.Client) -> dict[str, Any]:
    reply = http.post("/api/chat", json=QUESTION)
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


def test_a_second_request_copies_the_shared_prefix_of_a_busy_slot(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=600) as http:
        http.post("/api/generate", json={"model": MODEL, "keep_alive": 0})
        alone = _ask(http)
        http.post("/api/generate", json={"model": MODEL, "keep_alive": 0})
        with http.stream("POST", "/api/chat", json=HOLDER) as holder:
            assert holder.status_code == 200
            lines = holder.iter_lines()
            first = json.loads(next(line for line in lines if line))
            assert "error" not in first
            assert not first["done"]
            beside = _ask(http)
            rest = [json.loads(line) for line in lines if line]
    assert rest[-1]["done"] is True
    assert beside["message"]["content"] == alone["message"]["content"]
    assert beside["prompt_eval_count"] + 200 < alone["prompt_eval_count"]
    assert value(server.url, "homeport_prompt_prefix_copies_total", model=MODEL) >= 1


QUESTIONS = ["What does NGRAM mean here?", "Which class pauses drafting?",
             "Name one function in this file.", "Is this Python?"]


def _asked(question: str) -> dict[str, Any]:
    messages = [SYSTEM_MESSAGE, {"role": "user", "content": question}]
    return {**QUESTION, "messages": messages}


def test_requests_sent_together_evaluate_their_shared_prefix_once(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=600) as http:
        alone = []
        for question in QUESTIONS:
            http.post("/api/generate", json={"model": MODEL, "keep_alive": 0})
            reply = http.post("/api/chat", json=_asked(question))
            assert reply.status_code == 200, reply.text
            alone.append(reply.json())
        http.post("/api/generate", json={"model": MODEL, "keep_alive": 0})
        http.post("/api/generate", json={"model": MODEL})  # loaded: the four arrive together
        before = value(server.url, "homeport_prompt_tokens_total", model=MODEL,
                       source="evaluated")
        with ThreadPoolExecutor(len(QUESTIONS)) as pool:
            together = list(pool.map(
                lambda question: http.post("/api/chat", json=_asked(question)), QUESTIONS))
        evaluated = value(server.url, "homeport_prompt_tokens_total", model=MODEL,
                          source="evaluated") - before
    assert all(reply.status_code == 200 for reply in together)
    answers = [reply.json()["message"]["content"] for reply in together]
    assert answers == [reply["message"]["content"] for reply in alone]
    # Evaluated apart, the four prompts cost four times one; the shared system prompt (~600
    # tokens) evaluated once leaves each other request only its question.
    longest = max(reply["prompt_eval_count"] for reply in alone)
    assert evaluated < 1.5 * longest, (evaluated, longest)
