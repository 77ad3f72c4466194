"""The two bundled models: SmolLM2-135M (the default, always served) and Gemma 3 270M (served when
HOMEPORT_BUNDLED_MODELS names it), a base model that copies its input in raw completion."""

from __future__ import annotations

from pathlib import Path

import httpx
import ollama
import pytest

from homeport import config
from homeport.store.bundled import assembled_gemma
from tests.conftest import MODEL
from tests.support.models import GEMMA, gemma_gguf
from tests.support.server import ServerProcess

GREEDY = {"temperature": 0, "seed": 42, "num_predict": 24}
# A function, a comment asking for a changed copy, and the copy's first line, as an edit sends it.
COPY_PROMPT = ("def add(first, second):\n    total = first + second\n    return total\n\n"
               "# The same function again, renamed to plus:\ndef plus(first, second):\n")


def test_both_bundled_models_are_listed(gemma_server: ServerProcess) -> None:
    models = {model.model: model for model in ollama.Client(gemma_server.url).list().models}
    assert {MODEL, GEMMA} <= set(models)
    gemma = models[GEMMA]
    assert gemma.details is not None
    assert gemma.details.family == "gemma3"
    assert gemma.details.quantization_level == "Q4_K_M"
    assert gemma.size is not None
    assert gemma.size > gemma_gguf().stat().st_size  # the GGUF and its config layer


def test_gemma_copies_its_input_in_raw_completion(gemma_server: ServerProcess) -> None:
    reply = httpx.post(f"{gemma_server.url}/api/generate", timeout=300, json={
        "model": GEMMA, "prompt": COPY_PROMPT, "raw": True, "stream": False, "options": GREEDY})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["response"].startswith("    total = first + second\n    return total\n")
    assert body["eval_count"] <= GREEDY["num_predict"]


def test_gemma_answers_a_chat_and_smollm2_still_does(gemma_server: ServerProcess) -> None:
    client = ollama.Client(gemma_server.url)
    for model in (GEMMA, MODEL):
        answer = client.chat(model=model, options=GREEDY,
                             messages=[{"role": "user", "content": "Name a colour."}])
        assert answer.message.content, model
        assert answer.eval_count is not None
        assert 0 < answer.eval_count <= GREEDY["num_predict"]


def test_only_smollm2_is_served_by_default(base_url: str) -> None:
    names = {model.model for model in ollama.Client(base_url).list().models}
    assert MODEL in names
    assert GEMMA not in names


def test_gemma_is_assembled_once_and_again_only_when_damaged(tmp_path: Path) -> None:
    first = assembled_gemma(tmp_path)
    assert first is not None
    stamp = first.stat().st_mtime_ns
    assert assembled_gemma(tmp_path) == first
    assert first.stat().st_mtime_ns == stamp  # found and trusted, not written again
    with first.open("r+b") as damaged:
        damaged.truncate(1024)
    again = assembled_gemma(tmp_path)
    assert again == first
    assert first.stat().st_size == gemma_gguf().stat().st_size
    assert [path.name for path in tmp_path.iterdir() if path.name.endswith(".tmp")] == []


@pytest.mark.parametrize(("raw", "expected"), [
    ("gemma3:270m, smollm2:135m", ("gemma3:270m", "smollm2:135m")),
    ("GEMMA3:270M", ("gemma3:270m",)),
    ("llama3:8b", ("smollm2:135m",)),  # not bundled: the default, with a warning
])
def test_the_bundled_models_setting(monkeypatch: pytest.MonkeyPatch, raw: str,
                                    expected: tuple[str, ...]) -> None:
    monkeypatch.setenv("HOMEPORT_BUNDLED_MODELS", raw)
    assert config.BUNDLED_MODELS.get() == expected
