"""An OpenAI-compatible server as an upstream: llama-cpp-python's own server (serving the bundled
SmolLM2 GGUF) behind a homeport node with no models of its own. The official clients talk only
to the homeport node, with Ollama's native API (translated) and OpenAI's (passed through)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from homeport.mesh.openai_upstream import (
    AnswerMapper,
    chat_messages,
    error_message,
    response_format,
    sampling_fields,
    show_answer,
    translate_request,
)
from tests.conftest import MODEL
from tests.support.models import bundled_gguf
from tests.support.server import ServerProcess, free_port
from tests.support.waiting import wait_for

ALIAS = "smollm2-upstream"
KEY = f"{ALIAS}:latest"
GREEDY = {"temperature": 0, "seed": 42, "num_predict": 12}
ENV = {"HOMEPORT_CONTEXT_LENGTH": "2048", "HOMEPORT_UPSTREAM_REFRESH": "500ms"}
HI = [{"role": "user", "content": "Hi"}]
STORY = [{"role": "user", "content": "Write a long story about a harbour"}]  # longer than 12 tokens


# --- the translation, function by function --------------------------------------------------

def test_options_and_format_map_onto_openai_fields() -> None:
    options = {"num_predict": 5, "stop": ["\n"], "seed": 3, "temperature": 0.2, "top_p": 0.9,
               "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1, "num_ctx": 4096}
    assert sampling_fields(options) == {
        "max_tokens": 5, "stop": ["\n"], "seed": 3, "temperature": 0.2, "top_p": 0.9,
        "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1}
    assert "max_tokens" not in sampling_fields({"num_predict": -1})
    assert response_format("json") == {"type": "json_object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert response_format(schema) == {"type": "json_schema",
                                       "json_schema": {"name": "response", "schema": schema}}
    assert response_format("") is None


def test_requests_map_per_route() -> None:
    chat = translate_request("/api/chat", {"model": "m", "messages": HI, "format": "json",
                                           "options": {"num_predict": 4}}, "upstream-id")
    assert chat.path == "/v1/chat/completions"
    assert chat.stream
    assert chat.body == {"model": "upstream-id", "max_tokens": 4,
                         "response_format": {"type": "json_object"}, "messages": HI,
                         "stream": True, "stream_options": {"include_usage": True}}
    generate = translate_request("/api/generate", {"prompt": "Sky", "system": "Be brief",
                                                   "stream": False}, "m")
    assert generate.body["messages"] == [{"role": "system", "content": "Be brief"},
                                         {"role": "user", "content": "Sky"}]
    assert not generate.stream
    raw = translate_request("/api/generate", {"prompt": "Sky", "raw": True}, "m")
    assert (raw.path, raw.body["prompt"]) == ("/v1/completions", "Sky")
    embed = translate_request("/api/embeddings", {"prompt": "one"}, "m")
    assert (embed.path, embed.body) == ("/v1/embeddings", {"model": "m", "input": ["one"]})


def test_tool_calls_in_history_get_string_arguments_and_ids() -> None:
    history = [*HI,
               {"role": "assistant", "content": "",
                "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}]},
               {"role": "tool", "content": "cold", "tool_name": "weather"}]
    converted = chat_messages(history)
    call = converted[1]["tool_calls"][0]
    assert call["function"] == {"name": "weather", "arguments": '{"city": "Oslo"}'}
    assert converted[2]["tool_call_id"] == call["id"]


def _delta(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_stream_chunks_become_ollama_records() -> None:
    mapper = AnswerMapper("/api/chat", "m")
    assert mapper.chunk(_delta({"role": "assistant"})) == []
    [thought] = mapper.chunk(_delta({"reasoning_content": "hmm"}))
    assert thought["message"] == {"role": "assistant", "content": "", "thinking": "hmm"}
    [said] = mapper.chunk(_delta({"content": "Hello"}))
    assert said["message"]["content"] == "Hello"
    assert said["done"] is False
    # A tool call arrives in fragments and leaves whole, with object arguments, in the last record.
    start = {"index": 0, "id": "c1", "function": {"name": "weather", "arguments": '{"ci'}}
    assert mapper.chunk(_delta({"tool_calls": [start]})) == []
    rest = {"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}
    assert mapper.chunk(_delta({"tool_calls": [rest]}, "tool_calls")) == []
    mapper.chunk({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
    last = mapper.final()
    assert last["done"] is True
    assert last["done_reason"] == "stop"
    assert last["message"]["tool_calls"] == [{"function": {"name": "weather",
                                                           "arguments": {"city": "Oslo"}}}]
    assert (last["prompt_eval_count"], last["eval_count"]) == (7, 3)
    assert last["total_duration"] >= last["eval_duration"] >= 0


def test_generate_records_and_whole_answers() -> None:
    mapper = AnswerMapper("/api/generate", "m")
    [record] = mapper.chunk({"choices": [{"index": 0, "text": "blue", "finish_reason": None}]})
    assert record["response"] == "blue"
    whole = AnswerMapper("/api/chat", "m").whole({
        "choices": [{"message": {"content": "", "reasoning": "think",
                                 "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]},
                     "finish_reason": "length"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 9}})
    assert whole["message"]["thinking"] == "think"
    assert whole["message"]["tool_calls"] == [{"function": {"name": "f", "arguments": {}}}]
    assert (whole["done_reason"], whole["eval_count"]) == ("length", 9)


def test_show_and_errors_from_what_the_upstream_tells() -> None:
    shown = show_answer({"id": "m", "meta": {"n_ctx_train": 8192}})
    assert shown["capabilities"] == ["completion"]
    assert shown["model_info"]["context_length"] == 8192
    assert error_message(400, b'{"error": {"message": "too long"}}') == "too long"
    assert error_message(422, b'{"detail": "bad"}') == "bad"
    assert error_message(502, b"") == "the upstream answered 502"


# --- through a real OpenAI-compatible server --------------------------------------------------

class OpenAIServer:
    """llama-cpp-python's OpenAI-compatible server on a free loopback port. By default it cuts a
    stream short when another request arrives (the gateway's background listing would): off."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_gguf()),
             "--model_alias", ALIAS, "--host", "127.0.0.1", "--port", str(self.port),
             "--n_ctx", "2048", "--embedding", "true", "--verbose", "false",
             "--interrupt_requests", "false"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/v1/models", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mesh-openai")
    upstream = OpenAIServer(root / "llama-cpp-server.log")
    node = ServerProcess(root / "node", env=ENV, args=("--upstream", upstream.url))
    try:
        assert wait_for(upstream.answers, timeout=120), (root / "llama-cpp-server.log").read_text()
        node.start()
        httpx.request("DELETE", f"{node.url}/api/delete", json={"model": MODEL},
                      timeout=30).raise_for_status()
        assert wait_for(lambda: KEY in _listed(node.url)), _listed(node.url)
        yield node.url
    finally:
        node.stop()
        upstream.stop()


def _listed(url: str) -> dict[str, list[str]]:
    models = httpx.get(f"{url}/api/tags", timeout=10).json()["models"]
    return {model["name"]: model["homeport"]["nodes"] for model in models}


def test_the_upstreams_model_is_listed_with_its_node(gateway: str) -> None:
    names = [model.model for model in ollama.Client(host=gateway).list().models]
    assert names == [KEY]
    [where] = _listed(gateway)[KEY]
    assert where.startswith("127.0.0.1:")
    assert ollama.Client(host=gateway).show(ALIAS).capabilities == ["completion"]


def test_chat_streamed_equals_chat_whole(gateway: str) -> None:
    client = ollama.Client(host=gateway)
    whole = client.chat(ALIAS, messages=STORY, options=GREEDY)
    assert whole.done
    assert whole.message.content
    assert whole.eval_count == 12
    assert whole.done_reason == "length"
    assert whole.prompt_eval_count
    parts = list(client.chat(ALIAS, messages=STORY, options=GREEDY, stream=True))
    assert len(parts) > 2
    assert parts[-1].done
    assert not any(part.done for part in parts[:-1])
    assert "".join(part.message.content or "" for part in parts) == whole.message.content
    assert parts[-1].eval_count
    assert parts[-1].eval_count <= 12
    assert parts[-1].done_reason == "length"
    assert parts[-1].total_duration


def test_generate_and_options(gateway: str) -> None:
    client = ollama.Client(host=gateway)
    generated = client.generate(ALIAS, "The sky is", options={**GREEDY, "num_predict": 4})
    assert generated.done
    assert generated.response
    assert generated.eval_count is not None
    assert generated.eval_count <= 4
    unstopped = client.generate(ALIAS, "Count: 1, 2, 3,", options=GREEDY).response
    stop = unstopped.strip()[:2]  # a string the unstopped answer contains
    stopped = client.generate(ALIAS, "Count: 1, 2, 3,", options={**GREEDY, "stop": [stop]})
    assert stop not in stopped.response
    assert len(stopped.response) < len(unstopped)
    raw = client.generate(ALIAS, "The sky is", raw=True, options={**GREEDY, "num_predict": 4})
    assert raw.done
    assert raw.response


def test_format_json_gives_json(gateway: str) -> None:
    reply = ollama.Client(host=gateway).chat(
        ALIAS, messages=[{"role": "user", "content": "Give a JSON object with a name"}],
        format="json", options={**GREEDY, "num_predict": 200})
    assert reply.done_reason == "stop", reply.message.content
    assert isinstance(json.loads(reply.message.content or ""), dict)


def test_embed(gateway: str) -> None:
    client = ollama.Client(host=gateway)
    embedded = client.embed(ALIAS, input=["one", "two"])
    assert len(embedded.embeddings) == 2
    assert len(embedded.embeddings[0]) > 10
    assert embedded.embeddings[0] != embedded.embeddings[1]
    assert abs(sum(value * value for value in embedded.embeddings[0]) - 1) < 1e-3
    assert len(client.embeddings(ALIAS, prompt="one").embedding) == len(embedded.embeddings[0])


def test_upstream_errors_come_back_in_ollamas_shape(gateway: str) -> None:
    client = ollama.Client(host=gateway)
    with pytest.raises(ollama.ResponseError) as too_long:
        client.chat(ALIAS, messages=[{"role": "user", "content": "word " * 3000}], stream=False)
    assert too_long.value.status_code == 400
    assert "context length" in too_long.value.error
    [node] = _listed(gateway)[KEY]
    pinned = httpx.post(f"{gateway}/api/chat", headers={"X-Homeport-Node": node}, timeout=60,
                        json={"model": "elsewhere", "messages": HI})
    assert pinned.status_code == 404
    assert "elsewhere" in pinned.json()["error"]
    bad = httpx.post(f"{gateway}/api/chat", timeout=60,
                     json={"model": ALIAS, "messages": HI, "format": 3})
    assert bad.status_code == 400
    assert "format" in bad.json()["error"]
    assert client.chat(ALIAS, messages=HI, options={**GREEDY, "num_predict": 2}).done


def test_openai_routes_pass_through(gateway: str) -> None:
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="x")
    reply = client.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=6, temperature=0)
    assert reply.choices[0].message.content
    assert reply.usage is not None
    assert reply.usage.completion_tokens <= 6
    chunks = list(client.chat.completions.create(
        model=ALIAS, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0,
        stream=True))
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) \
        == reply.choices[0].message.content
