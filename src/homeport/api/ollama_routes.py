"""Ollama's native API: /api/chat, /api/generate, embeddings, and model listing and info
(model management is in ``model_routes``).

Handlers translate wire shapes to engine calls and back; the engine does the work. Streams are
NDJSON, one object per token, with the final object carrying ``done_reason`` and the timings in
nanoseconds; an error after the stream started is one more ``{"error": ...}`` line.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from homeport.api import schemas
from homeport.api.access import (
    MeteredGeneration,
    max_num_ctx,
    may_use,
    note_embedding_tokens,
    start_generation,
    visible,
)
from homeport.api.body import read_json
from homeport.api.common import (
    OLLAMA_COMPAT_VERSION,
    details,
    incoming_tool_calls,
    model_summary,
    nanoseconds,
    ollama_tool_calls,
    resolve_model,
    rfc3339,
    state_of,
)
from homeport.api.streaming import NDJSON, StreamResponse, cancel_on_disconnect, ndjson_line
from homeport.engine.service import (
    ChatMessage,
    Done,
    GenerationInput,
    Output,
    capabilities,
    l2_normalize,
)
from homeport.errors import BadRequestError
from homeport.mesh.catalogue import merged_listing
from homeport.mesh.upstreams import NODE_ID_HEADER
from homeport.net.caller import caller_of
from homeport.store import ModelRecord

log = logging.getLogger(__name__)


def timings_fields(done: Done) -> dict[str, Any]:
    """The final chunk's metrics; zero values are left out, as Ollama leaves them out."""
    t = done.timings
    fields = {
        "total_duration": nanoseconds(t.total),
        "load_duration": nanoseconds(t.load),
        "prompt_eval_count": t.prompt_eval_count,
        "prompt_eval_duration": nanoseconds(t.prompt_eval),
        "eval_count": t.eval_count,
        "eval_duration": nanoseconds(t.eval),
        # homeport's own, which clients ignore: the prompt's length before it was cut to fit
        "prompt_truncated_from": t.prompt_truncated_from,
    }
    return {key: value for key, value in fields.items() if value}


def to_chat_message(message: schemas.MessageIn) -> ChatMessage:
    return ChatMessage(
        role=message.role, content=message.content or "", thinking=message.thinking,
        images=list(message.images or []), tool_calls=incoming_tool_calls(message.tool_calls),
        tool_name=message.tool_name, tool_call_id=message.tool_call_id,
    )


def _tools(tools: list[schemas.Tool] | None) -> list[dict[str, Any]] | None:
    return [tool.model_dump(exclude_none=True) for tool in tools] if tools else None


def _ndjson(generation: MeteredGeneration,
           encode: Callable[[Output | Done], dict[str, Any]]) -> AsyncIterator[bytes]:
    return generation.encoded(lambda event: [ndjson_line(encode(event))],
                              lambda exc: ndjson_line({"error": exc.message}))


# --- /api/chat -----------------------------------------------------------------------------------


def _chat_message(content: str, thinking: str = "",
                  tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


async def chat(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, schemas.ChatRequest, state.max_body_bytes)
    record = resolve_model(request, body.model)
    name = body.model

    def envelope(**fields: Any) -> dict[str, Any]:
        return {"model": name, "created_at": rfc3339(), **fields}

    if not body.messages:
        done = await cancel_on_disconnect(request.receive, state.engine.load(
            record, body.options, body.keep_alive, max_num_ctx(request)))
        return JSONResponse(envelope(message=_chat_message(""), done_reason=done.reason,
                                     done=True))
    generation = await start_generation(request, GenerationInput(
        record=record, options=body.options, keep_alive=body.keep_alive,
        messages=[to_chat_message(message) for message in body.messages],
        tools=_tools(body.tools), think=body.think, format=body.format,
        truncate=body.truncate is not False,
    ))
    if body.stream is False:
        answer = await generation.whole(request.receive)
        message = _chat_message(answer.content, answer.thinking,
                                ollama_tool_calls(answer.tool_calls))
        return JSONResponse(envelope(message=message, done_reason=answer.done.reason, done=True,
                                     **timings_fields(answer.done)))

    def encode(event: Output | Done) -> dict[str, Any]:
        if isinstance(event, Output):
            return envelope(message=_chat_message(
                event.content, event.thinking, ollama_tool_calls(event.tool_calls)), done=False)
        return envelope(message=_chat_message(""), done_reason=event.reason, done=True,
                        **timings_fields(event))

    return StreamResponse(_ndjson(generation, encode), NDJSON)


# --- /api/generate -------------------------------------------------------------------------------


async def generate(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, schemas.GenerateRequest, state.max_body_bytes)
    if body.raw and (body.template or body.system or body.context):
        raise BadRequestError("raw mode does not support template, system, or context")
    record = resolve_model(request, body.model)
    name = body.model

    def envelope(**fields: Any) -> dict[str, Any]:
        return {"model": name, "created_at": rfc3339(), **fields}

    if not body.prompt and not body.suffix and not body.context:
        done = await cancel_on_disconnect(request.receive, state.engine.load(
            record, body.options, body.keep_alive, max_num_ctx(request)))
        return JSONResponse(envelope(response="", done=True, done_reason=done.reason))
    generation = await start_generation(request, GenerationInput(
        record=record, options=body.options, keep_alive=body.keep_alive, prompt=body.prompt,
        system=body.system, suffix=body.suffix, raw=body.raw, context=body.context,
        think=body.think, format=body.format, truncate=body.truncate is not False,
        images=list(body.images or []),
    ))

    def final(done: Done, text: str = "", thinking: str = "") -> dict[str, Any]:
        fields: dict[str, Any] = {"response": text}
        if thinking:
            fields["thinking"] = thinking
        fields.update(done=True, done_reason=done.reason)
        if not body.raw:
            fields["context"] = list(done.context)
        return envelope(**fields, **timings_fields(done))

    if body.stream is False:
        answer = await generation.whole(request.receive)
        return JSONResponse(final(answer.done, answer.content, answer.thinking))

    def encode(event: Output | Done) -> dict[str, Any]:
        if isinstance(event, Done):
            return final(event)
        fields: dict[str, Any] = {"response": event.content}
        if event.thinking:
            fields["thinking"] = event.thinking
        return envelope(**fields, done=False)

    return StreamResponse(_ndjson(generation, encode), NDJSON)


# --- embeddings ----------------------------------------------------------------------------------


async def embed(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, schemas.EmbedRequest, state.max_body_bytes)
    record = resolve_model(request, body.model)
    limit = max_num_ctx(request)
    inputs = [body.input] if isinstance(body.input, str) else body.input
    if inputs == [""]:
        inputs = []
    if not inputs:
        done = await state.engine.load(record, body.options, body.keep_alive, limit)
        return JSONResponse({"model": body.model, "embeddings": [],
                             "load_duration": nanoseconds(done.timings.load)})
    started = time.perf_counter()
    vectors, tokens, load_seconds = await cancel_on_disconnect(
        request.receive, state.engine.embed(
            record, inputs, truncate=body.truncate is not False, options=body.options,
            keep_alive=body.keep_alive, max_num_ctx=limit))
    note_embedding_tokens(request, tokens)
    return JSONResponse({
        "model": body.model,
        "embeddings": [l2_normalize(vector, body.dimensions) for vector in vectors],
        "total_duration": nanoseconds(time.perf_counter() - started),
        "load_duration": nanoseconds(load_seconds),
        "prompt_eval_count": tokens,
    })


async def embeddings(request: Request) -> Response:
    """The legacy endpoint: one prompt, one un-normalised vector."""
    state = state_of(request)
    body = await read_json(request, schemas.EmbeddingsRequest, state.max_body_bytes)
    record = resolve_model(request, body.model)
    limit = max_num_ctx(request)
    if not body.prompt:
        await state.engine.load(record, body.options, body.keep_alive, limit)
        return JSONResponse({"embedding": []})
    vectors, tokens, _ = await cancel_on_disconnect(request.receive, state.engine.embed(
        record, [body.prompt], truncate=True, options=body.options, keep_alive=body.keep_alive,
        max_num_ctx=limit))
    note_embedding_tokens(request, tokens)
    return JSONResponse({"embedding": vectors[0]})


# --- listing and info ----------------------------------------------------------------------------


async def root(request: Request) -> Response:
    return PlainTextResponse("Ollama is running")


async def version(request: Request) -> Response:
    from homeport import __version__

    upstreams = state_of(request).upstreams
    node = {NODE_ID_HEADER: upstreams.node_id} if upstreams is not None and upstreams.node_id else {}
    return JSONResponse({"version": OLLAMA_COMPAT_VERSION, "homeport": __version__}, headers=node)


async def tags(request: Request) -> Response:
    state = state_of(request)
    records = visible(request, state.store.list_models())
    records.sort(key=lambda record: record.modified_at, reverse=True)
    local = [model_summary(record) for record in records]
    return JSONResponse({"models": merged_listing(local, state.upstreams,
                                                  caller_of(request.scope).grant.allows_model)})


async def ps(request: Request) -> Response:
    manager = state_of(request).engine.manager
    models = []
    for runner in manager.runners:
        if not may_use(request, runner.record):
            continue
        entry = model_summary(runner.record)
        entry.update(
            size=runner.size,
            expires_at=rfc3339(runner.expires_at_wall()),
            size_vram=runner.size_vram,
            context_length=runner.settings.n_ctx_per_seq,
            slots={"busy": runner.scheduler.busy_slots, "total": runner.settings.n_seq},
            queued=runner.scheduler.queued,
        )
        # Which machine holds how much: "local", then each RPC worker (host:port).
        entry["homeport"] = {"machines": [
            {"machine": share.machine, "layers": share.layers, "size": share.bytes}
            for share in runner.placement.machines()]}
        models.append(entry)
    return JSONResponse({"models": models})


def _parameters_text(parameters: dict[str, Any]) -> str:
    lines = []
    for key, value in parameters.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key:<30} {json.dumps(item)}")
    return "\n".join(lines)


def _modelfile(record: ModelRecord, template: str) -> str:
    lines = [f"# Modelfile generated by \"homeport show\"\nFROM {record.name.display}"]
    if record.draft_path is not None:
        # Ollama shows the blob's whole path; its name (the digest) says which file it is
        # without telling every caller where the server keeps its models.
        lines.append(f"DRAFT {record.draft_path.name}")
    if template:
        lines.append(f'TEMPLATE """{template}"""')
    if record.system:
        lines.append(f'SYSTEM """{record.system}"""')
    for key, value in record.parameters.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {key} {item}")
    for text in record.license:
        lines.append(f'LICENSE """{text}"""')
    return "\n".join(lines) + "\n"


async def show(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, schemas.ShowRequest, state.max_body_bytes)
    record = resolve_model(request, body.model or body.name)
    template = record.template or record.gguf.chat_template or ""
    response: dict[str, Any] = {
        "license": "\n".join(record.license) or record.gguf.metadata.get("general.license", ""),
        "modelfile": _modelfile(record, template),
        "parameters": _parameters_text(record.parameters),
        "template": template,
        "details": details(record),
        "model_info": record.gguf.model_info(),
        "capabilities": capabilities(record),
        "modified_at": rfc3339(record.modified_at),
    }
    if record.system:
        response["system"] = record.system
    if record.messages:
        response["messages"] = record.messages
    return JSONResponse(response)


routes = [
    Route("/", root, methods=["GET", "HEAD"]),
    Route("/api/version", version, methods=["GET", "HEAD"]),
    Route("/api/tags", tags, methods=["GET", "HEAD"]),
    Route("/api/ps", ps, methods=["GET"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/embed", embed, methods=["POST"]),
    Route("/api/embeddings", embeddings, methods=["POST"]),
]
