"""OpenAI's API, translated onto the same engine calls as the native routes.

Streams are SSE: ``data: {json}`` events ending with ``data: [DONE]``; an error after the stream
started is one ``data: {"error": ...}`` event. Mapping: ``max_tokens`` → num_predict, ``stop`` →
stop, ``response_format`` → format, ``reasoning_effort`` → think; temperature and top_p default to
1.0 as OpenAI's do.
"""

from __future__ import annotations

import base64
import json
import secrets
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from homeport.api import schemas
from homeport.api.access import (
    MeteredGeneration,
    max_num_ctx,
    note_embedding_tokens,
    start_generation,
    visible,
)
from homeport.api.body import read_json
from homeport.api.common import (
    AppState,
    incoming_tool_calls,
    model_summary,
    resolve_model,
    state_of,
    tool_call_id,
)
from homeport.api.errors import openai_error_body
from homeport.api.streaming import SSE, StreamResponse, cancel_on_disconnect, sse_event
from homeport.engine.parsing import ToolCall
from homeport.engine.service import (
    ChatMessage,
    Done,
    GenerationInput,
    Output,
    l2_normalize,
)
from homeport.errors import BadRequestError, ModelNotFoundError
from homeport.mesh.catalogue import NODES_FIELD, merged_listing
from homeport.net.caller import caller_of


def _options(body: schemas.OpenAIChatRequest | schemas.OpenAICompletionRequest,
             max_tokens: int | None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p,
    }
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    if body.seed is not None:
        options["seed"] = body.seed
    if body.stop is not None:
        options["stop"] = [body.stop] if isinstance(body.stop, str) else body.stop
    if body.frequency_penalty is not None:
        options["frequency_penalty"] = body.frequency_penalty
    if body.presence_penalty is not None:
        options["presence_penalty"] = body.presence_penalty
    return options


def _text_content(content: str | list[dict[str, Any]] | None) -> tuple[str, list[str]]:
    """Text and base64 images from an OpenAI content field (string or list of parts)."""
    if content is None or isinstance(content, str):
        return content or "", []
    texts, images = [], []
    for part in content:
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url", {}).get("url", "") if isinstance(
                part.get("image_url"), dict) else ""
            if not url.startswith("data:"):
                raise BadRequestError("images must be given as data: URLs")
            images.append(url.partition(",")[2])
        else:
            raise BadRequestError(f"unsupported content part type {kind!r}")
    return "\n".join(texts), images


def _messages(messages: list[schemas.OpenAIMessage]) -> list[ChatMessage]:
    converted = []
    for message in messages:
        text, images = _text_content(message.content)
        converted.append(ChatMessage(
            role=message.role, content=text, images=images,
            tool_calls=incoming_tool_calls(message.tool_calls),
            tool_call_id=message.tool_call_id, thinking=message.reasoning,
            tool_name=message.name if message.role == "tool" else None))
    return converted


def _format(response_format: schemas.OpenAIResponseFormat | None) -> str | dict[str, Any] | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return "json"
    if response_format.type == "json_schema":
        schema = (response_format.json_schema or {}).get("schema")
        if not isinstance(schema, dict):
            raise BadRequestError("response_format.json_schema.schema must be an object")
        return schema
    raise BadRequestError(f"unsupported response_format type {response_format.type!r}")


def think_from_effort(effort: str | None) -> bool | str | None:
    """``think`` for an OpenAI ``reasoning_effort`` (or Responses ``reasoning.effort``)."""
    if effort is None:
        return None
    if effort == "none":
        return False
    if effort in ("low", "medium", "high"):
        return effort
    raise BadRequestError(f"invalid reasoning_effort {effort!r}: use low, medium, high or none")


def _finish_reason(done: Done, has_tool_calls: bool) -> str:
    if has_tool_calls:
        return "tool_calls"
    return "length" if done.reason == "length" else "stop"


def _usage(done: Done) -> dict[str, Any]:
    t = done.timings
    return {
        "prompt_tokens": t.prompt_tokens,
        "completion_tokens": t.eval_count,
        "total_tokens": t.prompt_tokens + t.eval_count,
        "prompt_tokens_details": {"cached_tokens": t.prompt_cached},
    }


def _openai_tool_calls(calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
    return [{"id": tool_call_id(), "index": call.index, "type": "function",
             "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}
            for call in calls]


def _sse(generation: MeteredGeneration, encode: Callable[[Output | Done], list[dict[str, Any]]],
         include_usage: bool, usage_chunk: Callable[[Done], dict[str, Any]]
         ) -> AsyncIterator[bytes]:
    def events(event: Output | Done) -> list[bytes]:
        chunks = encode(event)
        if isinstance(event, Done) and include_usage:
            chunks.append(usage_chunk(event))
        return [sse_event(chunk) for chunk in chunks]

    return generation.encoded(
        events, lambda exc: sse_event(openai_error_body(exc.status, exc.message)),
        after=[sse_event("[DONE]")])


# --- /v1/chat/completions ------------------------------------------------------------------------


async def chat_completions(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, schemas.OpenAIChatRequest, state.max_body_bytes)
    record = resolve_model(request, body.model)
    if not body.messages:
        raise BadRequestError("[] is too short - 'messages'")
    generation = await start_generation(request, GenerationInput(
        record=record,
        options=_options(body, body.max_completion_tokens or body.max_tokens),
        messages=_messages(body.messages),
        tools=[tool.model_dump(exclude_none=True) for tool in body.tools] if body.tools else None,
        format=_format(body.response_format),
        think=think_from_effort(body.reasoning_effort),
    ))
    completion_id = f"chatcmpl-{secrets.token_hex(6)}"
    created = int(time.time())
    base = {"id": completion_id, "created": created, "model": body.model,
            "system_fingerprint": "fp_homeport"}

    if not body.stream:
        answer = await generation.whole(request.receive)
        message: dict[str, Any] = {"role": "assistant", "content": answer.content}
        if answer.thinking:
            message["reasoning"] = answer.thinking
        if answer.tool_calls:
            message["tool_calls"] = _openai_tool_calls(answer.tool_calls)
        return JSONResponse({
            **base, "object": "chat.completion",
            "choices": [{"index": 0, "message": message,
                         "finish_reason": _finish_reason(answer.done, bool(answer.tool_calls))}],
            "usage": _usage(answer.done),
        })

    saw_tool_calls = False

    def encode(event: Output | Done) -> list[dict[str, Any]]:
        nonlocal saw_tool_calls
        chunk = {**base, "object": "chat.completion.chunk"}
        if isinstance(event, Done):
            return [{**chunk, "choices": [{"index": 0, "delta": {},
                     "finish_reason": _finish_reason(event, saw_tool_calls)}]}]
        delta: dict[str, Any] = {"role": "assistant", "content": event.content}
        if event.thinking:
            delta["reasoning"] = event.thinking
        if event.tool_calls:
            saw_tool_calls = True
            delta["tool_calls"] = _openai_tool_calls(event.tool_calls)
        return [{**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}]

    def usage_chunk(done: Done) -> dict[str, Any]:
        return {**base, "object": "chat.completion.chunk", "choices": [], "usage": _usage(done)}

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamResponse(_sse(generation, encode, include_usage, usage_chunk), SSE)


# --- /v1/completions -----------------------------------------------------------------------------


async def completions(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, schemas.OpenAICompletionRequest, state.max_body_bytes)
    record = resolve_model(request, body.model)
    prompt = body.prompt if isinstance(body.prompt, str) else "".join(body.prompt)
    generation = await start_generation(request, GenerationInput(
        record=record, options=_options(body, body.max_tokens), prompt=prompt, raw=True,
        suffix=body.suffix))
    completion_id = f"cmpl-{secrets.token_hex(6)}"
    base = {"id": completion_id, "created": int(time.time()), "model": body.model,
            "system_fingerprint": "fp_homeport", "object": "text_completion"}

    if not body.stream:
        answer = await generation.whole(request.receive)
        text = (prompt if body.echo else "") + answer.content
        return JSONResponse({**base, "choices": [{
            "text": text, "index": 0, "logprobs": None,
            "finish_reason": _finish_reason(answer.done, False)}], "usage": _usage(answer.done)})

    def encode(event: Output | Done) -> list[dict[str, Any]]:
        if isinstance(event, Done):
            return [{**base, "choices": [{"text": "", "index": 0, "logprobs": None,
                                          "finish_reason": _finish_reason(event, False)}]}]
        return [{**base, "choices": [{"text": event.content, "index": 0, "logprobs": None,
                                      "finish_reason": None}]}]

    def usage_chunk(done: Done) -> dict[str, Any]:
        return {**base, "choices": [], "usage": _usage(done)}

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamResponse(_sse(generation, encode, include_usage, usage_chunk), SSE)


# --- models and embeddings -----------------------------------------------------------------------


def _model_object(state: AppState, name: str, modified: float) -> dict[str, Any]:
    owner = name.split("/")[-2] if name.count("/") >= 1 else "library"
    return {"id": name, "object": "model", "created": int(modified), "owned_by": owner}


async def list_models(request: Request) -> Response:
    state = state_of(request)
    records = visible(request, state.store.list_models())
    local = [model_summary(record) for record in records]
    created = {record.name.display: record.modified_at.timestamp() for record in records}
    data = []
    for entry in merged_listing(local, state.upstreams, caller_of(request.scope).grant.allows_model):
        item = _model_object(state, entry["name"], created.get(entry["name"], 0))
        item[NODES_FIELD] = entry[NODES_FIELD]
        data.append(item)
    return JSONResponse({"object": "list", "data": data})


async def get_model(request: Request) -> Response:
    state = state_of(request)
    name = request.path_params["model"]
    try:
        record = resolve_model(request, name)
    except ModelNotFoundError:
        raise ModelNotFoundError(name, hint="") from None
    return JSONResponse(_model_object(state, name, record.modified_at.timestamp()))


def _encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


async def create_embeddings(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, schemas.OpenAIEmbeddingRequest, state.max_body_bytes)
    record = resolve_model(request, body.model)
    inputs = [body.input] if isinstance(body.input, str) else body.input
    if not inputs or any(text == "" for text in inputs):
        raise BadRequestError("input must be a non-empty string or a list of non-empty strings")
    vectors, tokens, _ = await cancel_on_disconnect(request.receive, state.engine.embed(
        record, inputs, truncate=True, options=None, keep_alive=None,
        max_num_ctx=max_num_ctx(request)))
    note_embedding_tokens(request, tokens)
    data = [{"object": "embedding", "index": index,
             "embedding": _encode_vector(l2_normalize(vector, body.dimensions),
                                         body.encoding_format)}
            for index, vector in enumerate(vectors)]
    return JSONResponse({"object": "list", "data": data, "model": body.model,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    Route("/v1/embeddings", create_embeddings, methods=["POST"]),
]
