"""Sampling under a grammar settles a rejected free sample by checking the best candidates first,
a chunk at a time, instead of applying the grammar to the whole vocabulary on the model's thread.
It must give exactly the tokens the full pass gives: same greedy pick, same top-k set, same draw."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import ollama
import pytest

from homeport.engine import grammar
from homeport.engine.llama import Batch, ContextSettings, LlamaModel, Sampler, SamplingParams
from tests.conftest import MODEL
from tests.support.models import bundled_gguf

ENUM = [f"item-{index:03d}" for index in range(grammar.MAX_ALTERNATIVES)]
SCHEMAS: dict[str, dict[str, Any]] = {
    "enum": {"enum": ENUM},
    "maxLength": {"type": "string", "maxLength": grammar.MAX_LENGTH},
    "object": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    }, "required": ["name", "age", "tags"]},
}
SAMPLINGS = {
    "greedy": {"temperature": 0.0},
    "seeded": {"temperature": 0.8, "top_k": 40, "seed": 7},
    # The rest of the chain after top-k, all of it seeing the narrowed candidates.
    "seeded-chain": {"temperature": 0.8, "top_k": 40, "seed": 7, "typical_p": 0.8,
                     "min_p": 0.02},
}
PROMPT = "Reply with JSON. Pick one of the items and describe a person:"
NUM_PREDICT = 48


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaModel]:
    loaded = LlamaModel(bundled_gguf(), ContextSettings(n_ctx_per_seq=256, n_seq=1))
    yield loaded
    loaded.close()


def _generate(model: LlamaModel, params: SamplingParams, *, narrow: bool) -> tuple[list[int], int]:
    """Up to NUM_PREDICT tokens after PROMPT on a cleared sequence 0, and how many rejected free
    samples the chunked search settled."""
    model.forget(0)
    prompt = model.tokenize(PROMPT)
    sampler = Sampler(model, params, narrow=narrow)
    batch = Batch(len(prompt))
    try:
        for position, token in enumerate(prompt):
            index = batch.add(token, position, 0, want_logits=position == len(prompt) - 1)
        model.decode(batch)
        tokens: list[int] = []
        while len(tokens) < NUM_PREDICT:
            token = sampler.sample(model, index)
            tokens.append(token)
            if model.is_end_of_generation(token):
                break
            batch.clear()
            index = batch.add(token, len(prompt) + len(tokens) - 1, 0, want_logits=True)
            model.decode(batch)
        return tokens, sampler.narrowed
    finally:
        sampler.free()
        batch.free()


@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize("schema", SCHEMAS)
def test_chunked_grammar_sampling_gives_the_full_pass_tokens(model: LlamaModel, schema: str,
                                                             sampling: str) -> None:
    params = SamplingParams(grammar=grammar.json_grammar(SCHEMAS[schema]), **SAMPLINGS[sampling])

    full, not_narrowed = _generate(model, params, narrow=False)
    chunked, narrowed = _generate(model, params, narrow=True)

    assert not_narrowed == 0
    assert chunked == full
    # The comparison means something only where the free sample was rejected and the chunks
    # settled it: greedy needs one accepted token, top-k 40 of them (an object's keys and
    # punctuation have them; an enum's next characters, or a string's opening quote, do not).
    if sampling == "greedy" or schema == "object":
        assert narrowed > 0
    text = model.detokenize(full)
    if schema == "enum" and model.is_end_of_generation(full[-1]):
        assert json.loads(text) in ENUM


@pytest.mark.parametrize("options", [{"temperature": 0}, {"temperature": 0.8, "seed": 7}])
def test_an_enum_of_256_values_answers_one_of_them(base_url: str,
                                                   options: dict[str, Any]) -> None:
    reply = ollama.Client(host=base_url).chat(
        MODEL, messages=[{"role": "user", "content": "Pick an item."}],
        format={"enum": ENUM}, options={**options, "num_predict": 64})
    assert reply.done_reason == "stop"
    assert json.loads(reply.message.content) in ENUM
