"""Speculative decoding from the request's own text: drafts are made, taken, and change nothing.

Two servers on freshly loaded models, one in the default setup (which speculates on this engine:
built for the CPU with homeport's patch, its runners ask for kernels whose sums do not move with
the step) and one with HOMEPORT_SPECULATION=false (the same kernels), get the same greedy
requests: an edit that copies code, an ordinary chat, and both at once beside a third stream
(another batch composition). The answers must match token for token, and only the
speculating server's /metrics count drafted and accepted tokens.
The same holds for a model with a draft model (Ollama's DRAFT line): SmolLM2 drafting for itself,
which can only change how many tokens a step confirms; its drafts come from the request's own text
where that has one and from the draft model otherwise, both counted.

That needs each token's logits to be the same at any step size: the runner asks the patched
engine's kernels for that (``kernel_environment``; tests/test_step_invariance.py measures it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import psutil
import pytest

from bench.editor_prompts import edit_task
from tests.conftest import MODEL
from tests.support.metrics import value
from tests.support.models import GEMMA, WITH_GEMMA, bundled_gguf
from tests.support.server import ServerProcess
from tests.test_runners import runner_pids

REGION = "\n".join((Path(__file__).resolve().parents[1] / "src" / "homeport" / "engine"
                    / "drafting.py").read_text().splitlines()[24:52])
EDIT = {"model": MODEL, "raw": True, "stream": False,
        "prompt": (f"<|im_start|>user\nRepeat this code exactly, with NGRAM renamed to N:\n"
                   f"{REGION}<|im_end|>\n<|im_start|>assistant\n"),
        "options": {"temperature": 0, "num_predict": 120}}
CHAT = {"model": MODEL, "stream": False,
        "messages": [{"role": "user", "content": "Name three rivers in Europe."}],
        "options": {"temperature": 0, "num_predict": 48}}
THIRD = {"model": MODEL, "stream": False,
         "messages": [{"role": "user", "content": "Write a haiku about ports."}],
         "options": {"temperature": 0, "num_predict": 48}}


def _server(tmp_path_factory: pytest.TempPathFactory, name: str,
            env: dict[str, str]) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp(f"speculation-{name}"),
                            env={"HOMEPORT_CONTEXT_LENGTH": "2048", **env, **WITH_GEMMA})
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def speculating(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _server(tmp_path_factory, "default", {})


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _server(tmp_path_factory, "off", {"HOMEPORT_SPECULATION": "false"})


DRAFTED = "smol-drafted"


def _answers(url: str, model: str = MODEL) -> dict[str, Any]:
    """Each request alone on a freshly loaded ``model``, then all three at once."""

    async def post(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> Any:
        reply = await http.post(path, json={**body, "model": model})
        assert reply.status_code == 200, reply.text
        return reply.json()

    async def run() -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=url, timeout=600) as http:
            await post(http, "/api/generate", {"keep_alive": 0})
            edit = await post(http, "/api/generate", EDIT)
            chat = await post(http, "/api/chat", CHAT)
            together = await asyncio.gather(post(http, "/api/generate", EDIT),
                                            post(http, "/api/chat", CHAT),
                                            post(http, "/api/chat", THIRD))
        return {"edit": edit["response"], "chat": chat["message"]["content"],
                "together": [together[0]["response"], together[1]["message"]["content"],
                             together[2]["message"]["content"]]}

    return asyncio.run(run())


# Gemma 3 270M is a base model that copies its input: the editor bench's edit (a region, a comment
# asking for it again with one change, and its first line), raw.
GEMMA_EDIT = {"model": GEMMA, "raw": True, "stream": False, "prompt": edit_task().prompt,
              "options": {"temperature": 0, "num_predict": 600}}


def _drafted(url: str, model: str = MODEL, source: str = "prompt") -> tuple[float, float]:
    return (value(url, "homeport_drafted_tokens_total", model=model, source=source),
            value(url, "homeport_draft_accepted_tokens_total", model=model, source=source))


def test_greedy_answers_are_the_same_with_and_without_speculation(
        speculating: ServerProcess, plain: ServerProcess) -> None:
    with_drafts = _answers(speculating.url)
    without = _answers(plain.url)
    assert with_drafts == without
    drafted, accepted = _drafted(speculating.url)
    assert drafted > 0
    assert 0 < accepted <= drafted
    assert _drafted(speculating.url, source="model") == (0, 0)
    assert _drafted(plain.url) == (0, 0)


def test_a_draft_model_changes_no_greedy_answer(speculating: ServerProcess,
                                                plain: ServerProcess) -> None:
    client = ollama.Client(host=speculating.url)
    gguf = bundled_gguf()
    created = httpx.post(f"{speculating.url}/api/create", timeout=120, json={
        "model": DRAFTED, "from": MODEL, "stream": False,
        "draft_files": {gguf.name: client.create_blob(gguf)}})
    assert created.status_code == 200, created.text

    assert _answers(speculating.url, DRAFTED) == _answers(plain.url)
    for source in ("model", "prompt"):
        drafted, accepted = _drafted(speculating.url, f"{DRAFTED}:latest", source)
        assert drafted > 0, source
        assert 0 < accepted <= drafted, source
    assert "drafting with sha256-" in speculating.log()
    # /api/ps counts the draft model beside the model: its weights and caches besides.
    client.generate(DRAFTED, prompt="", keep_alive="5m")
    drafting = next(model for model in client.ps().models if model.model == f"{DRAFTED}:latest")
    plain_client = ollama.Client(host=plain.url)
    plain_client.generate(MODEL, prompt="", keep_alive="5m")
    alone = next(model for model in plain_client.ps().models if model.model == MODEL)
    assert drafting.size > alone.size + gguf.stat().st_size


def test_gemma_copies_the_same_with_and_without_speculation(speculating: ServerProcess,
                                                             plain: ServerProcess) -> None:
    """Gemma's Q4_K and Q6_K weights have kernels of their own for 4 and for 8 tokens a step
    (repacked weights, tiled matmuls): a runner that must be exact keeps them off, so a draft
    changes none of its logits either, alone or beside another stream. (With them, the bench's
    600-token copy differed with and without speculation.)"""

    async def copies(url: str) -> list[str]:
        async with httpx.AsyncClient(base_url=url, timeout=600) as http:
            alone = await http.post("/api/generate", json=GEMMA_EDIT)
            beside = await asyncio.gather(http.post("/api/generate", json=GEMMA_EDIT),
                                          http.post("/api/chat", json={**CHAT, "model": GEMMA}))
        assert all(reply.status_code == 200 for reply in (alone, *beside))
        return [alone.json()["response"], beside[0].json()["response"],
                beside[1].json()["message"]["content"]]

    with_drafts = asyncio.run(copies(speculating.url))
    assert with_drafts == asyncio.run(copies(plain.url))
    assert len(with_drafts[0]) > 200
    drafted, accepted = _drafted(speculating.url, GEMMA)
    assert 100 < accepted <= drafted  # much of the copy came from drafts
    # The runners, still loaded: both without the tiled kernels (both exact).
    for server in (speculating, plain):
        runner = psutil.Process(runner_pids(server)[GEMMA])
        assert runner.environ().get("GGML_CPU_TILED_MM") == "0"
