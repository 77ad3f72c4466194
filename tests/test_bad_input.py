"""Bad input gets the right status and a clear message, and the server keeps serving."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from tests.conftest import DETERMINISTIC, MODEL


@pytest.fixture
def http(base_url: str) -> httpx.Client:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


def _still_serving(http: httpx.Client) -> None:
    reply = http.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False,
                                             "options": DETERMINISTIC})
    assert reply.status_code == 200
    assert reply.json()["done"] is True


@pytest.mark.parametrize(("body", "status", "fragment"), [
    (b"", 400, "missing request body"),
    (b"{not json", 400, "invalid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"model": MODEL, "messages": "hi"}).encode(), 400, "messages"),
    (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                 "options": {"num_ctx": "big"}}).encode(), 400,
     'option "num_ctx" must be of type integer'),
    (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                 "options": {"temperature": True}}).encode(), 400, "temperature"),
    (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                 "stream": "yes"}).encode(), 400, "stream"),
    (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                 "keep_alive": "3600"}).encode(), 400, "missing unit"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(), 400,
     "model is required"),
    (json.dumps({"model": "no-such-model", "messages": []}).encode(), 404,
     "model 'no-such-model' not found, try pulling it first"),
    (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                 "format": "yaml"}).encode(), 400, "invalid format"),
    (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                 "think": True}).encode(), 400, "does not support thinking"),
    (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                 "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}
                ).encode(), 400, '"smollm2:135m" does not support tools'),
])
def test_chat_rejects(http: httpx.Client, body: bytes, status: int, fragment: str) -> None:
    reply = http.post("/api/chat", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == status, reply.text
    assert fragment in reply.json()["error"]
    _still_serving(http)


@pytest.mark.parametrize("name", [
    "../../etc/passwd", "a/../../b", "%2e%2e", "x" * 300, "a:b:c", "/abs", "model name",
    "..", "ns/../m",
])
def test_invalid_model_names(http: httpx.Client, name: str) -> None:
    for path, body in (("/api/chat", {"model": name, "messages": [{"role": "user", "content": "x"}]}),
                       ("/api/show", {"model": name}),
                       ("/api/generate", {"model": name, "prompt": "x"})):
        reply = http.post(path, json=body)
        assert reply.status_code == 400, (path, reply.text)
        assert reply.json() == {"error": "invalid model name"}
    _still_serving(http)


def test_body_over_the_limit_is_413(http: httpx.Client) -> None:
    huge = {"model": MODEL, "prompt": "x" * (2 * 1024 * 1024)}  # the test server allows 1 MiB
    reply = http.post("/api/generate", json=huge)
    assert reply.status_code == 413
    assert "too large" in reply.json()["error"]
    # Without a Content-Length, the limit still holds while streaming the body in.
    def chunks():
        for _ in range(40):
            yield b"x" * 65536
    reply = http.post("/api/generate", content=chunks())
    assert reply.status_code == 413
    _still_serving(http)


def test_wrong_method_and_unknown_path(http: httpx.Client) -> None:
    reply = http.get("/api/chat")
    assert reply.status_code == 405
    assert "method not allowed" in reply.json()["error"]
    reply = http.post("/api/tags")
    assert reply.status_code == 405
    reply = http.get("/api/nothing-here")
    assert reply.status_code == 404
    assert "error" in reply.json()


def test_double_slash_is_tolerated(base_url: str) -> None:
    # CodeCompanion builds "${url}/api/chat"; a URL ending in "/" gives "//api/chat". curl sends it
    # as is (httpx would rewrite it), so curl it is.
    body = json.dumps({"model": MODEL, "stream": False, "options": DETERMINISTIC,
                       "messages": [{"role": "user", "content": "hi"}]})
    result = subprocess.run(
        ["curl", "-sS", "-w", "\\n%{http_code}", f"{base_url}//api/chat", "-d", body],
        capture_output=True, text=True, timeout=60, check=True)
    text, _, status = result.stdout.rpartition("\n")
    assert status == "200", result.stdout
    assert json.loads(text)["message"]["content"]


def test_num_ctx_far_above_the_model_is_clamped(http: httpx.Client) -> None:
    reply = http.post("/api/generate", json={
        "model": MODEL, "prompt": "hello", "stream": False,
        "options": {**DETERMINISTIC, "num_ctx": 10_000_000}})
    assert reply.status_code == 200, reply.text
    loaded = {m["name"]: m for m in http.get("/api/ps").json()["models"]}
    assert loaded[MODEL]["context_length"] == 8192  # the model's trained context
    # back to the session's default for the other tests
    http.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False,
                                     "options": DETERMINISTIC})


def test_num_predict_unlimited_with_a_stop(http: httpx.Client) -> None:
    reply = http.post("/api/generate", json={
        "model": MODEL, "prompt": "List the numbers from 1 to 20, one per line.", "stream": False,
        "options": {"temperature": 0, "seed": 1, "num_predict": -1, "stop": ["5"]}})
    body = reply.json()
    assert reply.status_code == 200
    assert body["done_reason"] == "stop"
    assert "5" not in body["response"]
    assert body["eval_count"] < 200


def test_unknown_options_are_ignored(http: httpx.Client) -> None:
    reply = http.post("/api/generate", json={
        "model": MODEL, "prompt": "hi", "stream": False,
        "options": {**DETERMINISTIC, "no_such_option": 3, "num_gpu": 1}})
    assert reply.status_code == 200


def test_keep_alive_forms(http: httpx.Client) -> None:
    for keep_alive in ("10m", "1h30m", 600, -1, "-1m", 3600.5):
        reply = http.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False,
                                                 "keep_alive": keep_alive, "options": DETERMINISTIC})
        assert reply.status_code == 200, (keep_alive, reply.text)
    http.post("/api/generate", json={"model": MODEL, "prompt": "", "keep_alive": "5m"})


def test_format_json_and_schema_are_enforced(http: httpx.Client) -> None:
    reply = http.post("/api/chat", json={
        "model": MODEL, "stream": False, "format": "json",
        "messages": [{"role": "user", "content": "Describe a cat as JSON."}],
        "options": {"temperature": 0, "seed": 3, "num_predict": 80}})
    assert reply.status_code == 200
    content = reply.json()["message"]["content"]
    if reply.json()["done_reason"] == "stop":
        json.loads(content)
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                                "age": {"type": "integer"}},
              "required": ["name", "age"]}
    reply = http.post("/api/chat", json={
        "model": MODEL, "stream": False, "format": schema,
        "messages": [{"role": "user", "content": "Invent a person."}],
        "options": {"temperature": 0, "seed": 3, "num_predict": 200}})
    assert reply.status_code == 200
    value = json.loads(reply.json()["message"]["content"])
    assert isinstance(value["name"], str)
    assert isinstance(value["age"], int)


def test_error_after_the_stream_started_is_one_more_line(http: httpx.Client) -> None:
    # Streams end with done:true; a failure mid-stream would add {"error"}: here we check the
    # happy path's framing, NDJSON content type and one object per line.
    with http.stream("POST", "/api/chat", json={
            "model": MODEL, "messages": [{"role": "user", "content": "hi"}],
            "options": DETERMINISTIC}) as reply:
        assert reply.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in reply.iter_lines() if line]
    assert lines[-1]["done"] is True
    assert all(not line["done"] for line in lines[:-1])


def test_images_on_a_text_model_are_refused(http: httpx.Client) -> None:
    reply = http.post("/api/generate", json={"model": MODEL, "prompt": "what is this?",
                                             "images": ["aGVsbG8="]})
    assert reply.status_code == 400
    assert "does not support images" in reply.json()["error"]
    reply = http.post("/api/chat", json={"model": MODEL, "messages": [
        {"role": "user", "content": "what is this?", "images": ["aGVsbG8="]}]})
    assert reply.status_code == 400
    assert "does not support images" in reply.json()["error"]


def test_raw_with_a_system_prompt_is_refused(http: httpx.Client) -> None:
    reply = http.post("/api/generate", json={"model": MODEL, "prompt": "x", "raw": True,
                                             "system": "be nice"})
    assert reply.status_code == 400
    assert "raw" in reply.json()["error"]
