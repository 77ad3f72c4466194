"""OpenAI's Responses API (/v1/responses), stateless, with the official ``openai`` package."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import MODEL
from tests.support.server import ServerProcess

TERSE = "Be terse."


@pytest.fixture
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="ignored", max_retries=0)


def test_a_response_and_its_stream_agree(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Say hi.", instructions=TERSE,
                                       temperature=0, max_output_tokens=300)
    assert response.status == "completed"
    assert response.id.startswith("resp_")
    assert [item.type for item in response.output] == ["message"]
    assert response.output_text
    assert response.usage is not None
    assert 0 < response.usage.output_tokens <= 300

    with client.responses.stream(
            model=MODEL, instructions=TERSE, temperature=0, max_output_tokens=300,
            input=[{"role": "user", "content": [{"type": "input_text", "text": "Say hi."}]}],
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == response.output_text
    assert final.output_text == response.output_text
    assert final.status == "completed"


def test_max_output_tokens_makes_an_incomplete_response(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Tell me a long story.",
                                       temperature=0, max_output_tokens=4)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None
    assert response.usage.output_tokens == 4


def test_input_items_make_the_same_prompt_as_the_chat_api(client: openai.OpenAI) -> None:
    """Earlier turns as input items (developer, user, assistant output_text) render as the same
    messages sent to chat completions: greedy decoding gives the same answer."""
    response = client.responses.create(model=MODEL, temperature=0, max_output_tokens=16, input=[
        {"role": "developer", "content": "You answer in one sentence."},
        {"role": "user", "content": "My name is Ada."},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Hello Ada!", "annotations": []}]},
        {"role": "user", "content": "What is my name?"}])
    chat = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=16, messages=[
        {"role": "system", "content": "You answer in one sentence."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada!"},
        {"role": "user", "content": "What is my name?"}])
    assert response.output_text == chat.choices[0].message.content


def test_reasoning_effort_is_ignored_by_a_model_that_cannot_think(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Say hi.", temperature=0,
                                       max_output_tokens=8, reasoning={"effort": "high"})
    assert [item.type for item in response.output] == ["message"]


def test_structured_output(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string"}},
              "required": ["colour"], "additionalProperties": False}
    response = client.responses.create(
        model=MODEL, input="Pick a colour.", temperature=0, max_output_tokens=60,
        text={"format": {"type": "json_schema", "name": "pick", "schema": schema}})
    assert isinstance(json.loads(response.output_text)["colour"], str)


def test_stateful_and_bad_requests_are_refused(client: openai.OpenAI,
                                               server: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError, match="previous_response_id is not supported"):
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_earlier")
    with pytest.raises(openai.BadRequestError, match="role must be"):
        client.responses.create(model=MODEL, input=[{"role": "wizard", "content": "hi"}])  # type: ignore[list-item,misc]
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="missing-model", input="hi")
    broken = httpx.post(f"{server.url}/v1/responses", json={"model": MODEL, "input": 42})
    assert broken.status_code == 400
    assert broken.json()["error"]["type"] == "invalid_request_error"
