"""Model lifecycle: keep_alive, load/unload requests, LRU eviction, reloads, memory, prefix reuse."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.metrics import value
from tests.support.models import distinct_copy, install_model
from tests.support.server import ServerProcess

OPTIONS = {"temperature": 0, "seed": 3, "num_predict": 8}



@pytest.fixture(scope="module")
def server3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("lifecycle")
    files = home / "files"
    files.mkdir()
    for name in ("alpha", "beta", "gamma"):
        install_model(home / "data" / "models", f"{name}:latest", distinct_copy(files, name))
    env = {"HOMEPORT_MAX_LOADED_MODELS": "2", "HOMEPORT_NUM_PARALLEL": "2",
           "HOMEPORT_CONTEXT_LENGTH": "512"}
    with ServerProcess(home, env=env) as process:
        yield process


def loaded(url: str) -> dict[str, dict[str, object]]:
    return {m["name"]: m for m in httpx.get(f"{url}/api/ps", timeout=10).json()["models"]}


def generate(url: str, model: str, **fields: object) -> dict[str, object]:
    reply = httpx.post(f"{url}/api/generate", timeout=120, json={
        "model": model, "prompt": "hello", "stream": False, "options": OPTIONS, **fields})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def unload_all(url: str) -> None:
    for name in loaded(url):
        generate(url, name, prompt="", keep_alive=0)
    assert loaded(url) == {}


def test_load_and_unload_requests(server3: ServerProcess) -> None:
    url = server3.url
    unload_all(url)
    assert generate(url, "alpha", prompt="")["done_reason"] == "load"
    assert "alpha:latest" in loaded(url)
    assert generate(url, "alpha", prompt="", keep_alive=0)["done_reason"] == "unload"
    assert "alpha:latest" not in loaded(url)
    chat = httpx.post(f"{url}/api/chat", timeout=60, json={"model": "beta", "messages": []}).json()
    assert chat["done_reason"] == "load"
    assert chat["done"] is True


def test_keep_alive_expiry_unloads(server3: ServerProcess) -> None:
    url = server3.url
    unload_all(url)
    generate(url, "alpha", keep_alive="1s")
    assert "alpha:latest" in loaded(url)
    deadline = time.monotonic() + 10
    while "alpha:latest" in loaded(url) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "alpha:latest" not in loaded(url)


def test_keep_alive_zero_unloads_after_answering(server3: ServerProcess) -> None:
    url = server3.url
    reply = generate(url, "gamma", keep_alive=0)
    assert reply["response"]
    deadline = time.monotonic() + 5
    while "gamma:latest" in loaded(url) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "gamma:latest" not in loaded(url)


def test_least_recently_used_is_evicted(server3: ServerProcess) -> None:
    url = server3.url
    unload_all(url)
    generate(url, "alpha", keep_alive="10m")
    generate(url, "beta", keep_alive="10m")
    generate(url, "alpha", keep_alive="10m")  # alpha is now the most recently used
    generate(url, "gamma", keep_alive="10m")  # a third model: the limit is two
    assert set(loaded(url)) == {"alpha:latest", "gamma:latest"}


def test_changed_num_ctx_reloads(server3: ServerProcess) -> None:
    url = server3.url
    generate(url, "alpha", options={**OPTIONS, "num_ctx": 256})
    assert loaded(url)["alpha:latest"]["context_length"] == 256
    generate(url, "alpha", options={**OPTIONS, "num_ctx": 384})
    assert loaded(url)["alpha:latest"]["context_length"] == 384


def test_ps_shows_expiry_and_slots(server3: ServerProcess) -> None:
    url = server3.url
    generate(url, "beta", keep_alive=-1)
    entry = loaded(url)["beta:latest"]
    assert str(entry["expires_at"]).startswith("2318")
    assert entry["slots"] == {"busy": 0, "total": 2}
    generate(url, "beta", keep_alive="5m")


def test_growing_chat_reuses_the_cached_prefix(server3: ServerProcess) -> None:
    url = server3.url
    messages = [{"role": "system", "content": "You are terse. " * 20},
                {"role": "user", "content": "Name a colour."}]
    first = httpx.post(f"{url}/api/chat", timeout=60, json={
        "model": "alpha", "messages": messages, "stream": False, "options": OPTIONS}).json()
    evaluated = value(url, "homeport_prompt_tokens_total", model="alpha:latest",
                      source="evaluated")
    cached = value(url, "homeport_prompt_tokens_total", model="alpha:latest", source="cached")
    messages += [first["message"], {"role": "user", "content": "Another one."}]
    second = httpx.post(f"{url}/api/chat", timeout=60, json={
        "model": "alpha", "messages": messages, "stream": False, "options": OPTIONS}).json()
    new_evaluated = value(url, "homeport_prompt_tokens_total", model="alpha:latest",
                          source="evaluated") - evaluated
    new_cached = value(url, "homeport_prompt_tokens_total", model="alpha:latest",
                       source="cached") - cached
    # The whole first prompt (system, question) comes from the cache; only the answer's tail and
    # the new question are evaluated.
    assert new_cached >= first["prompt_eval_count"] - 1
    assert new_evaluated == second["prompt_eval_count"]
    assert new_evaluated < 40 < new_cached


def test_a_model_too_big_for_memory_is_a_clear_error(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "small", env={"HOMEPORT_MEMORY_LIMIT": "64MiB"}) as process:
        reply = httpx.post(f"{process.url}/api/chat", timeout=60, json={
            "model": "smollm2:135m", "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 400
        message = reply.json()["error"]
        assert "needs" in message
        assert "memory" in message
        assert "available" in message
        assert httpx.get(f"{process.url}/api/tags", timeout=10).status_code == 200
        assert process.alive()
