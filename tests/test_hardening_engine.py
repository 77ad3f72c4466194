"""Hostile input to the engine: schemas that would crash or stall llama.cpp's grammar code, token
ids outside the vocabulary, huge stop lists. Each is a 400 naming its limit, and the requests
running beside it on the same model finish exactly as they would alone."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest

from homeport.engine import grammar
from homeport.engine.llama import ContextSettings, EngineError, LlamaModel, Sampler, SamplingParams
from homeport.engine.scheduler import Event, Failed, Finished, Job, Scheduler, deliver_directly
from tests.conftest import MODEL
from tests.support.models import bundled_gguf

GREEDY = {"temperature": 0, "seed": 7, "num_predict": 40}
PROMPT = "Name three rivers in Europe."


def _nested(depth: int, wrap: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(depth):
        schema = wrap(schema)
    return schema


CRASHING_SCHEMAS = {
    "maxLength": ({"type": "string", "maxLength": 30000},
                  '"maxLength" 30000 is over the limit of 1000'),
    "pattern": ({"type": "string", "pattern": "^a{0,100000}$"},
                '"pattern" repeats 100000 times, over the limit of 1000'),
    # Deeper than the schema's limit, within the request body's own (128 levels, api/body.py).
    "objects": (_nested(40, lambda inner: {"type": "object", "properties": {"a": inner},
                                            "required": ["a"]}),
                "it nests deeper than the limit of 64"),
    "arrays": (_nested(100, lambda inner: {"type": "array", "items": inner}),
               "it nests deeper than the limit of 64"),
    "enum": ({"enum": list(range(100_000))}, '"enum" has 100000 values, over the limit of 256'),
}


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


def _still_chats(base_url: str) -> None:
    reply = ollama.Client(host=base_url).chat(
        MODEL, messages=[{"role": "user", "content": "hi"}], options=GREEDY)
    assert reply.done


@pytest.mark.parametrize("case", CRASHING_SCHEMAS)
def test_schemas_past_the_limits_are_400_on_every_api(base_url: str, http: httpx.Client,
                                                      case: str) -> None:
    schema, limit = CRASHING_SCHEMAS[case]
    message = f"format: JSON schema too large: {limit}"
    messages = [{"role": "user", "content": "Answer in JSON."}]

    with pytest.raises(ollama.ResponseError) as chat:
        ollama.Client(host=base_url).chat(MODEL, messages=messages, format=schema, options=GREEDY)
    assert (chat.value.status_code, chat.value.error) == (400, message)

    generate = http.post("/api/generate", json={"model": MODEL, "prompt": "JSON:", "format": schema,
                                                "stream": False, "options": GREEDY})
    assert (generate.status_code, generate.json()) == (400, {"error": message})

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as completion:
        client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=8,  # type: ignore[arg-type]
            response_format={"type": "json_schema",
                             "json_schema": {"name": case, "schema": schema}})
    assert completion.value.status_code == 400
    assert completion.value.body["message"] == message  # type: ignore[index]
    _still_chats(base_url)


def test_a_schema_at_the_limits_is_served(http: httpx.Client) -> None:
    # Every bound at once: llama.cpp accepts what the checks let through.
    schema = {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": grammar.MAX_LENGTH},
        "code": {"type": "string", "pattern": f"^[a-z]{{0,{grammar.MAX_LENGTH}}}$"},
        "list": {"type": "array", "items": {"type": "integer"}, "maxItems": grammar.MAX_ITEMS},
        "pick": {"enum": [f"choice {i}" for i in range(grammar.MAX_ALTERNATIVES)]},
    }, "required": ["pick", "name", "code", "list"]}
    reply = http.post("/api/chat", json={
        "model": MODEL, "stream": False, "format": schema, "options": GREEDY,
        "messages": [{"role": "user", "content": "Fill in the form."}]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["done"] is True


def _alone(base_url: str) -> str:
    """The answer to PROMPT on a freshly loaded model, which is unloaded again afterwards."""
    client = ollama.Client(host=base_url)
    client.generate(MODEL, prompt="", keep_alive=0)
    return client.generate(MODEL, prompt=PROMPT, options=GREEDY, keep_alive=0).response


def _beside_a_stream(base_url: str,
                     meanwhile: Callable[[httpx.AsyncClient], Awaitable[None]]) -> str:
    """PROMPT's streamed answer (from a freshly loaded model), with ``meanwhile`` run once its
    first chunk has arrived."""

    async def run() -> str:
        async with httpx.AsyncClient(base_url=base_url, timeout=300) as http:
            parts = []
            async with http.stream("POST", "/api/generate", json={
                    "model": MODEL, "prompt": PROMPT, "options": GREEDY}) as reply:
                assert reply.status_code == 200
                lines = reply.aiter_lines()
                item = json.loads(await anext(lines))
                parts.append(item["response"])
                await meanwhile(http)
                async for line in lines:
                    if line:
                        item = json.loads(line)
                        assert "error" not in item, item
                        parts.append(item["response"])
            assert item["done"] is True
            return "".join(parts)

    return asyncio.run(run())


def test_a_stream_finishes_unharmed_beside_a_refused_huge_enum(base_url: str) -> None:
    expected = _alone(base_url)

    async def huge_enum(http: httpx.AsyncClient) -> None:
        reply = await http.post("/api/chat", json={
            "model": MODEL, "stream": False, "format": CRASHING_SCHEMAS["enum"][0],
            "messages": [{"role": "user", "content": "Pick one."}]})
        assert reply.status_code == 400
        assert "enum" in reply.json()["error"]

    assert _beside_a_stream(base_url, huge_enum) == expected


def _vocabulary_size() -> int:
    model = LlamaModel(bundled_gguf(), ContextSettings(n_ctx_per_seq=64, n_seq=1))
    try:
        return model.n_vocab
    finally:
        model.close()


def test_token_ids_outside_the_vocabulary_are_400_beside_a_stream(base_url: str) -> None:
    n_vocab = _vocabulary_size()
    expected = _alone(base_url)

    async def bad_contexts(http: httpx.AsyncClient) -> None:
        for bad in (-5, -1, n_vocab):
            reply = await http.post("/api/generate", json={
                "model": MODEL, "prompt": "hi", "context": [1, bad, 2], "stream": False})
            assert reply.status_code == 400, reply.text
            assert reply.json()["error"].startswith(f"invalid token id in context: {bad} ")

    assert _beside_a_stream(base_url, bad_contexts) == expected


def test_the_last_token_id_of_the_vocabulary_is_accepted(http: httpx.Client) -> None:
    reply = http.post("/api/generate", json={
        "model": MODEL, "prompt": "hi", "context": [_vocabulary_size() - 1], "stream": False,
        "options": GREEDY})
    assert reply.status_code == 200, reply.text


def test_twenty_thousand_stops_are_400(base_url: str, http: httpx.Client) -> None:
    stops = [f"stop{i}" for i in range(20_000)]
    reply = http.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False,
                                             "options": {**GREEDY, "stop": stops}})
    assert reply.status_code == 400
    assert reply.json()["error"] == 'option "stop" has 20000 strings, over the limit of 64'
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as completion:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                       stop=stops, max_tokens=8)
    assert "over the limit of 64" in completion.value.body["message"]  # type: ignore[index]


def test_a_few_stops_cut_the_answer_at_the_first_one(base_url: str) -> None:
    full = _alone(base_url)
    assert len(full) > 30, full
    stop = full[20:24]
    client = ollama.Client(host=base_url)
    client.generate(MODEL, prompt="", keep_alive=0)
    reply = client.generate(MODEL, prompt=PROMPT, keep_alive=0,
                            options={**GREEDY, "stop": ["never said", stop, "\u2603"]})
    assert reply.done_reason == "stop"
    assert reply.response == full[:full.find(stop)]


# --- the scheduler itself, with a token llama.cpp refuses slipped past the API's checks ----------

def _run_jobs(model: LlamaModel, prompts: list[list[int]], num_predict: int) -> list[Event]:
    """Run ``prompts`` on a fresh scheduler, all admitted in the same step; each one's last event."""
    outcomes: list[Event | None] = [None] * len(prompts)
    done = threading.Semaphore(0)

    def sink_for(index: int) -> Callable[[Event], None]:
        def sink(event: Event) -> None:
            if isinstance(event, Finished | Failed):
                outcomes[index] = event
                done.release()
        return sink

    scheduler = Scheduler(model, n_slots=len(prompts), n_batch=512, label="test",
                          deliver=deliver_directly)
    greedy = SamplingParams(temperature=0)
    jobs = [Job(prompt=prompt, sampling=greedy, sampler=Sampler(model, greedy),
                sink=sink_for(index), num_predict=num_predict)
            for index, prompt in enumerate(prompts)]
    try:
        # Held so that the scheduler's thread sees every job at once: they share the first batch.
        with scheduler._cond:
            for job in jobs:
                scheduler.submit(job)
        for _ in jobs:
            assert done.acquire(timeout=300)
    finally:
        scheduler.stop()
    assert all(outcome is not None for outcome in outcomes)
    return [outcome for outcome in outcomes if outcome is not None]


def test_a_failing_decode_fails_only_the_request_that_caused_it() -> None:
    settings = ContextSettings(n_ctx_per_seq=256, n_seq=2)
    model = LlamaModel(bundled_gguf(), settings)
    try:
        good = model.tokenize("Write a haiku about ports.")
        bad = [*model.tokenize("Hello"), model.n_vocab + 7,
               *model.tokenize(" there", add_special=False)]
        [alone] = _run_jobs(model, [good], num_predict=24)
    finally:
        model.close()
    assert isinstance(alone, Finished)

    model = LlamaModel(bundled_gguf(), settings)  # fresh: the same start as the run alone
    try:
        failed, beside = _run_jobs(model, [bad, good], num_predict=24)
        [after] = _run_jobs(model, [good], num_predict=24)  # the model still serves
    finally:
        model.close()
    assert isinstance(failed, Failed)
    assert isinstance(failed.error, EngineError)
    assert isinstance(beside, Finished)
    assert beside.stats.tokens == alone.stats.tokens
    assert isinstance(after, Finished)
    assert after.stats.generated == alone.stats.generated
