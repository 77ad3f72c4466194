"""The official ``openai`` Python SDK against the real server's /v1 routes."""

from __future__ import annotations

import math

import openai
import pytest

from tests.conftest import MODEL


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def test_chat_completion_not_streamed(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
        temperature=0, seed=7, max_tokens=20)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert 0 < completion.usage.completion_tokens <= 20
    assert completion.usage.total_tokens == (completion.usage.prompt_tokens
                                             + completion.usage.completion_tokens)


def test_chat_completion_streamed_with_usage(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Count to five."}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, temperature=0,
                                           seed=7, max_tokens=20)
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, seed=7, max_tokens=20, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    assert usage_chunks[0].choices == []
    assert usage_chunks[0].usage.completion_tokens == whole.usage.completion_tokens


def test_completions(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=MODEL, prompt="Once upon a time",
                                           max_tokens=12, temperature=0, seed=1)
    assert completion.choices[0].text
    assert completion.usage is not None
    assert completion.usage.completion_tokens <= 12
    streamed = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12,
                                         temperature=0, seed=1, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == \
        completion.choices[0].text


def test_models(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert MODEL in ids
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model:latest")
    assert "not found" in info.value.message


def test_embeddings_float_and_base64(client: openai.OpenAI) -> None:
    # The SDK asks for base64 by default and decodes it; ask for floats explicitly too.
    default = client.embeddings.create(model=MODEL, input=["harbour", "port"])
    floats = client.embeddings.create(model=MODEL, input=["harbour", "port"],
                                      encoding_format="float")
    assert len(default.data) == 2
    assert len(floats.data) == 2
    for a, b in zip(default.data, floats.data, strict=True):
        assert len(a.embedding) == 576
        assert math.isclose(math.sqrt(sum(v * v for v in b.embedding)), 1.0, rel_tol=1e-4)
        assert all(math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6)
                   for x, y in zip(a.embedding, b.embedding, strict=True))
    assert default.usage.prompt_tokens > 0


def test_errors_have_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="missing-model",
                                       messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 404
    body = info.value.body
    assert isinstance(body, dict)
    assert body["type"] == "not_found_error"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="../../etc/passwd",
                                       messages=[{"role": "user", "content": "hi"}])
    assert "invalid model name" in bad.value.message
