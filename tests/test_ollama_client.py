"""The official ``ollama`` Python client against the real server and the bundled model."""

from __future__ import annotations

import math

import ollama
import pytest

from tests.conftest import DETERMINISTIC, MODEL


@pytest.fixture
def client(base_url: str) -> ollama.Client:
    return ollama.Client(host=base_url)


def test_list_shows_the_bundled_model(client: ollama.Client) -> None:
    models = {model.model: model for model in client.list().models}
    assert MODEL in models
    bundled = models[MODEL]
    assert bundled.details is not None
    assert bundled.details.family == "llama"
    assert bundled.details.quantization_level == "Q4_1"
    assert bundled.details.parameter_size == "134.52M"
    assert bundled.size is not None
    assert bundled.size > 90_000_000


def test_show_reports_capabilities_and_context_length(client: ollama.Client) -> None:
    info = client.show(MODEL)
    assert info.capabilities is not None
    assert "completion" in info.capabilities
    assert "tools" not in info.capabilities
    assert info.details is not None
    assert info.details.family == "llama"
    assert info.modelinfo is not None
    assert info.modelinfo["llama.context_length"] == 8192
    assert info.template
    assert "<|im_start|>" in info.template


def test_chat_not_streamed(client: ollama.Client) -> None:
    response = client.chat(MODEL, messages=[{"role": "user", "content": "Say hello."}],
                           options=DETERMINISTIC, stream=False)
    assert response.message.role == "assistant"
    assert response.message.content.strip()
    assert response.done
    assert response.done_reason in ("stop", "length")
    assert response.eval_count
    assert 0 < response.eval_count <= DETERMINISTIC["num_predict"]
    assert response.prompt_eval_count
    assert response.prompt_eval_count > 0
    assert response.total_duration
    assert response.eval_duration


def test_chat_streamed_matches_not_streamed(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Name three colours."}]
    whole = client.chat(MODEL, messages=messages, options=DETERMINISTIC, stream=False)
    chunks = list(client.chat(MODEL, messages=messages, options=DETERMINISTIC, stream=True))
    assert len(chunks) > 2, "one object per token"
    assert all(not chunk.done for chunk in chunks[:-1])
    final = chunks[-1]
    assert final.done
    assert final.done_reason == whole.done_reason
    assert final.message.content == ""
    assert "".join(chunk.message.content for chunk in chunks) == whole.message.content
    assert final.eval_count == whole.eval_count


def test_generate_streamed_and_not(client: ollama.Client) -> None:
    whole = client.generate(MODEL, prompt="The capital of France is", options=DETERMINISTIC)
    assert whole.response.strip()
    assert whole.context
    assert all(isinstance(token, int) for token in whole.context)
    parts = list(client.generate(MODEL, prompt="The capital of France is",
                                 options=DETERMINISTIC, stream=True))
    assert "".join(part.response for part in parts) == whole.response


def test_embed_is_normalised(client: ollama.Client) -> None:
    result = client.embed(MODEL, input=["a harbour at dawn", "a port at sunrise", "tax law"])
    assert len(result.embeddings) == 3
    for vector in result.embeddings:
        assert len(vector) == 576
        assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, rel_tol=1e-4)
    near = sum(a * b for a, b in zip(result.embeddings[0], result.embeddings[1], strict=True))
    far = sum(a * b for a, b in zip(result.embeddings[0], result.embeddings[2], strict=True))
    assert near > far


def test_copy_then_delete(client: ollama.Client) -> None:
    client.copy(MODEL, "my-copy:v1")
    assert "my-copy:v1" in {model.model for model in client.list().models}
    reply = client.chat("my-copy:v1", messages=[{"role": "user", "content": "hi"}],
                        options=DETERMINISTIC)
    assert reply.message.content
    client.delete("my-copy:v1")
    assert "my-copy:v1" not in {model.model for model in client.list().models}
    assert MODEL in {model.model for model in client.list().models}
    with pytest.raises(ollama.ResponseError) as info:
        client.delete("my-copy:v1")
    assert info.value.status_code == 404


def test_ps_lists_the_loaded_model(client: ollama.Client) -> None:
    client.generate(MODEL, prompt="hi", options=DETERMINISTIC)
    running = {model.model: model for model in client.ps().models}
    assert MODEL in running
    assert running[MODEL].expires_at is not None
