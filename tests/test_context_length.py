"""The default context: OLLAMA_CONTEXT_LENGTH / HOMEPORT_CONTEXT_LENGTH when set, else chosen by
memory as Ollama chooses it; and a prompt cut to fit it is visible to the caller, not only in the
log (a header, a field of the final chunk, a counter)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from homeport import config
from homeport.engine.llama import ContextSettings
from homeport.engine.memory import GIB, choose_context_length, estimate_model_bytes
from homeport.store.gguf import read_gguf
from tests.conftest import DETERMINISTIC, MODEL
from tests.support.metrics import value
from tests.support.models import bundled_gguf
from tests.support.server import ServerProcess

KIB = 1024
HEADER = "X-Homeport-Prompt-Truncated"
# Far more than the test server's 2048-token context: about 3,000 tokens.
LONG = "Remember the first line. " + " ".join(f"item{n}" for n in range(1500))


# --- the choice, as a pure function ---------------------------------------------------------------


def test_ollama_tiers_by_memory() -> None:
    small_model = 500 * 1024**2
    for memory, expected in ((8 * GIB, 4096), (22 * GIB, 4096), (23 * GIB, 32768),
                             (46 * GIB, 32768), (47 * GIB, 262144), (128 * GIB, 262144)):
        assert choose_context_length(262144, memory, small_model, 2 * KIB, 1) == expected


def test_never_more_than_the_model_was_trained_on() -> None:
    assert choose_context_length(8192, 64 * GIB, GIB, 2 * KIB, 4) == 8192
    assert choose_context_length(1024, 8 * GIB, GIB, 2 * KIB, 4) == 1024


def test_no_more_than_fits_beside_the_weights_with_every_slot() -> None:
    # 24 GiB left after 40 GiB of weights; 128 KiB per token in each of 4 slots: 49,152 tokens.
    assert choose_context_length(131072, 64 * GIB, 40 * GIB, 128 * KIB, 4) == 49152
    # One slot fits four times as many, up to the tier.
    assert choose_context_length(131072, 64 * GIB, 40 * GIB, 128 * KIB, 1) == 131072
    # Whole steps of 1024 tokens, not what is left to the byte.
    assert choose_context_length(131072, 30 * GIB, 29 * GIB, 100 * KIB, 1) % 1024 == 0


def test_never_under_2048_even_when_nothing_fits() -> None:
    # The load is then refused with a message that says so, not run with a uselessly tiny context.
    assert choose_context_length(131072, 4 * GIB, 8 * GIB, 128 * KIB, 4) == 2048


def test_ollama_context_length_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.CONTEXT_LENGTH.lookup() == (0, "default")  # 0: chosen by memory
    monkeypatch.setenv("OLLAMA_CONTEXT_LENGTH", "16384")
    assert config.CONTEXT_LENGTH.lookup() == (16384, "OLLAMA_CONTEXT_LENGTH")
    monkeypatch.setenv("HOMEPORT_CONTEXT_LENGTH", "2048")
    assert config.CONTEXT_LENGTH.lookup() == (2048, "HOMEPORT_CONTEXT_LENGTH")


# --- the choice, in a real server -----------------------------------------------------------------


def _loaded_context(env: dict[str, str], home: Path) -> tuple[int, int]:
    """The status of one generation and the context the model was loaded with."""
    with ServerProcess(home, env=env) as server:
        reply = httpx.post(f"{server.url}/api/generate", timeout=120, json={
            "model": MODEL, "prompt": "hi", "stream": False, "options": DETERMINISTIC})
        models = httpx.get(f"{server.url}/api/ps", timeout=10).json()["models"]
        return reply.status_code, (models[0]["context_length"] if models else 0)


def test_ollama_context_length_sets_the_servers_default(tmp_path: Path) -> None:
    assert _loaded_context({"OLLAMA_CONTEXT_LENGTH": "1024"}, tmp_path) == (200, 1024)


def test_with_ample_memory_the_default_is_the_trained_context(tmp_path: Path) -> None:
    # 30 GiB is Ollama's 32k tier; SmolLM2-135M was trained on less, and gets all of it.
    trained = read_gguf(bundled_gguf()).context_length
    assert trained < 32768
    assert _loaded_context({"HOMEPORT_MEMORY_LIMIT": "30GiB"}, tmp_path) == (200, trained)


def test_with_little_memory_the_default_is_what_fits(tmp_path: Path) -> None:
    # Memory for 3,072 tokens in each of the 4 slots, not the 4,096 of the lowest tier.
    info = read_gguf(bundled_gguf())
    limit = estimate_model_bytes(info, ContextSettings(n_ctx_per_seq=3072, n_seq=4))
    assert _loaded_context({"HOMEPORT_MEMORY_LIMIT": str(limit)}, tmp_path) == (200, 3072)


# --- truncation, made visible ---------------------------------------------------------------------


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=180) as client:
        yield client


def _counted(base_url: str) -> float:
    return value(base_url, "homeport_prompts_truncated_total", model=MODEL)


def _truncation(header: str) -> tuple[int, int]:
    original, arrow, kept = header.partition(" -> ")
    assert arrow, header
    return int(original), int(kept)


def test_a_cut_prompt_is_reported_by_header_field_and_counter(
        http: httpx.Client, base_url: str) -> None:
    before = _counted(base_url)
    reply = http.post("/api/chat", json={"model": MODEL, "stream": False, "options": DETERMINISTIC,
                                         "messages": [{"role": "user", "content": LONG}]})
    assert reply.status_code == 200, reply.text
    original, kept = _truncation(reply.headers[HEADER])
    assert original > 2048 > kept
    body = reply.json()
    assert body["prompt_truncated_from"] == original
    assert body["prompt_eval_count"] <= kept  # the kept tokens, less any cached prefix
    assert _counted(base_url) == before + 1


def test_a_streamed_answer_carries_the_header_and_the_field(http: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": LONG, "options": DETERMINISTIC}
    with http.stream("POST", "/api/generate", json=body) as reply:
        assert reply.status_code == 200
        original, _ = _truncation(reply.headers[HEADER])
        lines = [json.loads(line) for line in reply.iter_lines() if line]
    assert lines[-1]["done"] is True
    assert lines[-1]["prompt_truncated_from"] == original
    assert all("prompt_truncated_from" not in line for line in lines[:-1])


def test_a_prompt_that_fits_has_neither(http: httpx.Client) -> None:
    reply = http.post("/api/chat", json={"model": MODEL, "stream": False, "options": DETERMINISTIC,
                                         "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200
    assert HEADER not in reply.headers
    assert "prompt_truncated_from" not in reply.json()


def test_openai_and_anthropic_clients_see_the_header(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": LONG}])
    original, kept = _truncation(raw.headers[HEADER])
    assert raw.parse().usage.prompt_tokens == kept < original
    reply = httpx.post(f"{base_url}/v1/messages", timeout=180, json={
        "model": MODEL, "max_tokens": 8, "stream": True,
        "messages": [{"role": "user", "content": LONG}]})
    assert reply.status_code == 200
    assert _truncation(reply.headers[HEADER])[0] > 2048
