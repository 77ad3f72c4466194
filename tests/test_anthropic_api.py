"""Anthropic's Messages API (/v1/messages) with the official ``anthropic`` SDK, as Claude Code and
Ollama's Anthropic compatibility use it: ``base_url`` is the server, the API key is ignored."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest

from homeport.client.adapters import Finished, Message, TextDelta, open_adapter
from homeport.client.settings import ClientSettings
from homeport.config import config_file
from tests.conftest import MODEL
from tests.support.server import ServerProcess

GREEDY: dict[str, Any] = {"temperature": 0}  # the SDK no longer has the field; the API takes it
QUESTION = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture
def client(server: ServerProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="ollama", max_retries=0)


def test_a_message_and_its_stream_agree(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=MODEL, max_tokens=24, system="You are terse.",
                                     messages=QUESTION, extra_body=GREEDY)
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == MODEL
    assert [block.type for block in message.content] == ["text"]
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert 0 < message.usage.output_tokens <= 24
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) > 10

    with client.messages.stream(model=MODEL, max_tokens=24, messages=QUESTION,
                                system=[{"type": "text", "text": "You are terse."}],
                                extra_body=GREEDY) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    text = message.content[0].text  # type: ignore[union-attr]
    assert streamed == text
    assert final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason == message.stop_reason
    assert final.usage.output_tokens == message.usage.output_tokens


def test_count_tokens_counts_what_a_message_reads(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model=MODEL, messages=QUESTION, system="You are terse.")
    message = client.messages.create(model=MODEL, max_tokens=2, messages=QUESTION,
                                     system="You are terse.", extra_body=GREEDY)
    read = message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
    assert counted.input_tokens == read
    longer = client.messages.count_tokens(model=MODEL, system="You are terse.", messages=[
        *QUESTION, {"role": "assistant", "content": "Red, green, blue."},
        {"role": "user", "content": "Three more?"}])
    assert longer.input_tokens > counted.input_tokens


def test_max_tokens_stops_the_answer(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=MODEL, max_tokens=3, messages=QUESTION,
                                     extra_body=GREEDY)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


def test_thinking_asked_of_a_model_that_cannot_think_is_ignored(
        client: anthropic.Anthropic) -> None:
    """Claude Code asks for thinking whatever the model; SmolLM2 just answers."""
    message = client.messages.create(model=MODEL, max_tokens=8, messages=QUESTION,
                                     thinking={"type": "enabled", "budget_tokens": 1024},
                                     extra_body=GREEDY)
    assert [block.type for block in message.content] == ["text"]


def test_blocks_make_the_same_prompt_as_the_native_api(client: anthropic.Anthropic,
                                                       server: ServerProcess) -> None:
    """System blocks, text blocks and earlier turns render as the same chat /api/chat renders:
    greedy decoding gives the same answer."""
    message = client.messages.create(
        model=MODEL, max_tokens=16, extra_body=GREEDY,
        system=[{"type": "text", "text": "You answer in one sentence."}],
        messages=[
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello Ada!"}]},
            {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]}])
    native = httpx.post(f"{server.url}/api/chat", timeout=60, json={
        "model": MODEL, "stream": False, "options": {"temperature": 0, "num_predict": 16},
        "messages": [{"role": "system", "content": "You answer in one sentence."},
                     {"role": "user", "content": "My name is Ada."},
                     {"role": "assistant", "content": "Hello Ada!"},
                     {"role": "user", "content": "What is my name?"}]}).json()
    assert message.content[0].text == native["message"]["content"]  # type: ignore[union-attr]
    assert message.usage.output_tokens == native["eval_count"]


def test_structured_output_follows_the_schema(client: anthropic.Anthropic) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string"}},
              "required": ["colour"]}
    message = client.messages.create(
        model=MODEL, max_tokens=60, extra_body=GREEDY,
        messages=[{"role": "user", "content": "Pick a colour."}],
        output_config={"format": {"type": "json_schema", "schema": schema}})
    answer = json.loads(message.content[0].text)  # type: ignore[union-attr]
    assert isinstance(answer["colour"], str)


def test_errors_come_in_anthropics_shape(client: anthropic.Anthropic,
                                         server: ServerProcess) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="missing-model", max_tokens=5, messages=QUESTION)
    assert missing.value.body == {"type": "error", "error": {
        "type": "not_found_error", "message": "model 'missing-model' not found, try pulling it "
                                              "first"}}
    with pytest.raises(anthropic.BadRequestError) as wrong_role:
        client.messages.create(model=MODEL, max_tokens=5, messages=[
            {"role": "wizard", "content": "hi"}])  # type: ignore[misc,list-item]
    assert "messages.0.role" in str(wrong_role.value)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=MODEL, max_tokens=5, messages=[])
    broken = httpx.post(f"{server.url}/v1/messages", content=b"{not json")
    assert broken.status_code == 400
    assert broken.json()["type"] == "error"
    assert broken.json()["error"]["type"] == "invalid_request_error"


def test_homeports_own_anthropic_adapter_talks_to_homeport(
        server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """The editor side's ``anthropic`` adapter, pointed at a homeport server instead of
    Anthropic's: the same wire format both ways."""
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "ignored-by-homeport")
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[adapters.anthropic]\nmodel = "{MODEL}"\n')
    adapter = open_adapter("anthropic", ClientSettings())
    events = list(adapter.stream([Message("user", "Say hi.")], system="Be terse.",
                                 max_tokens=16))
    text = "".join(event.text for event in events if isinstance(event, TextDelta))
    final = events[-1]
    assert isinstance(final, Finished)
    assert text.strip()
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert 0 < final.usage.output_tokens <= 16
