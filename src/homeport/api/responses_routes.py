"""OpenAI's Responses API (``POST /v1/responses``), stateless, as newer Ollama serves it.

The ``openai`` package's ``client.responses`` (and tools built on it) work against a home model.
``input`` is a string or a list of items: messages (text parts), ``function_call`` and
``function_call_output``; ``instructions`` is the system prompt. The answer's ``output`` holds a
``reasoning`` item (a thinking model's thoughts), a ``message`` item and ``function_call`` items.
Streams are SSE: ``response.created``, ``response.in_progress``, then per item
``response.output_item.added`` ... ``response.output_item.done`` (text through
``response.content_part.*`` and ``response.output_text.*``, arguments through
``response.function_call_arguments.*``), and ``response.completed``, or ``response.incomplete``
when ``max_output_tokens`` cut the answer.

Stateless only: ``previous_response_id`` is refused (nothing is stored), as are hosted tools.
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from homeport.api import schemas
from homeport.api.access import start_generation
from homeport.api.body import read_json
from homeport.api.common import (
    function_tool,
    resolve_model,
    state_of,
    template_tool_call,
    tool_call_id,
)
from homeport.api.openai_routes import think_from_effort
from homeport.api.streaming import SSE, StreamResponse, sse_event
from homeport.engine.parsing import ToolCall
from homeport.engine.service import ChatMessage, Done, GenerationInput, Output
from homeport.engine.templates import template_features
from homeport.errors import BadRequestError
from homeport.store import ModelRecord


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _text_of(content: Any, where: str) -> str:
    """A message's text: a string, or its text parts (input_text, output_text, text)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequestError(f"{where}.content must be a string or a list of parts")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            raise BadRequestError(f"{where}: unsupported content part {kind!r}")
    return "".join(texts)


def _messages(body: schemas.ResponsesRequest) -> list[ChatMessage]:
    converted: list[ChatMessage] = []
    if body.instructions:
        converted.append(ChatMessage("system", body.instructions))
    if isinstance(body.input, str):
        return [*converted, ChatMessage("user", body.input)]
    names: dict[str, str] = {}  # call_id -> function name, for the outputs that answer calls
    for index, item in enumerate(body.input):
        where = f"input.{index}"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise BadRequestError(f"{where}.role must be user, assistant, system or developer")
            converted.append(ChatMessage("system" if role == "developer" else role,
                                         _text_of(item.get("content"), where)))
        elif kind == "function_call":
            call_id, name = str(item.get("call_id", "")), str(item.get("name", ""))
            names[call_id] = name
            call = template_tool_call(call_id, name, str(item.get("arguments") or "{}"))
            converted.append(ChatMessage("assistant", tool_calls=[call]))
        elif kind == "function_call_output":
            call_id = str(item.get("call_id", ""))
            output = item.get("output")
            converted.append(ChatMessage(
                "tool", output if isinstance(output, str) else _text_of(output, where),
                tool_call_id=call_id, tool_name=names.get(call_id)))
        elif kind == "reasoning":
            continue  # the model's earlier thoughts: not sent back into the prompt
        else:
            raise BadRequestError(f"{where}: unsupported input item type {kind!r}")
    return converted


def _tools(body: schemas.ResponsesRequest) -> list[dict[str, Any]] | None:
    if not body.tools or body.tool_choice == "none":
        return None
    tools = []
    for tool in body.tools:
        if tool.type != "function" or not tool.name:
            raise BadRequestError(f"unsupported tool type {tool.type!r}: only functions run here")
        tools.append(function_tool(tool.name, tool.description, tool.parameters))
    return tools


def _format(text: schemas.ResponsesText | None) -> str | dict[str, Any] | None:
    if text is None or text.format is None or text.format.type == "text":
        return None
    if text.format.type == "json_object":
        return "json"
    if text.format.schema_ is None:
        raise BadRequestError("text.format.schema is required for json_schema")
    return text.format.schema_


def _think(reasoning: schemas.ResponsesReasoning | None, record: ModelRecord
           ) -> bool | str | None:
    """``reasoning.effort`` for a model that can think; ignored by one that cannot, since
    clients of this API send it by default."""
    if reasoning is None or not template_features(record.chat_template).thinking:
        return None
    return think_from_effort(reasoning.effort)


def _options(body: schemas.ResponsesRequest) -> dict[str, Any]:
    options: dict[str, Any] = {
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p,
    }
    if body.max_output_tokens is not None:
        options["num_predict"] = body.max_output_tokens
    return options


# --- output items --------------------------------------------------------------------------------


def _message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [_text_part(text)]
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": content}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reasoning_item(item_id: str, text: str | None) -> dict[str, Any]:
    content = [] if text is None else [{"type": "reasoning_text", "text": text}]
    return {"type": "reasoning", "id": item_id, "summary": [], "content": content}


def _function_call_item(item_id: str, call: ToolCall, arguments: str,
                        status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": tool_call_id(),
            "name": call.name, "arguments": arguments, "status": status}


class _Response:
    """The response object as it grows, and the stream events that tell of each change."""

    def __init__(self, body: schemas.ResponsesRequest, tools: list[dict[str, Any]] | None,
                 options: dict[str, Any]) -> None:
        self.output: list[dict[str, Any]] = []
        self.sequence = 0
        self._open: tuple[str, str, list[str]] | None = None  # kind, item id, texts so far
        self.snapshot: dict[str, Any] = {
            "id": _item_id("resp"), "object": "response", "created_at": int(time.time()),
            "status": "in_progress", "model": body.model, "output": self.output,
            "error": None, "incomplete_details": None, "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens, "parallel_tool_calls": True,
            "temperature": options["temperature"], "top_p": options["top_p"],
            "tool_choice": body.tool_choice if isinstance(body.tool_choice, str) else "auto",
            "tools": [{"type": "function", "name": t["function"]["name"],
                       "description": t["function"]["description"],
                       "parameters": t["function"]["parameters"], "strict": False}
                      for t in tools or []],
            "text": body.text.model_dump(by_alias=True, exclude_none=True) if body.text
            else {"format": {"type": "text"}},
            "usage": None, "store": False,
        }

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.sequence += 1
        return {"type": kind, "sequence_number": self.sequence - 1, **fields}

    def _lifecycle(self, kind: str) -> dict[str, Any]:
        return self.event(kind, response=copy.deepcopy(self.snapshot))

    def start(self) -> list[dict[str, Any]]:
        return [self._lifecycle("response.created"), self._lifecycle("response.in_progress")]

    def _close(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        kind, item_id, texts = self._open
        self._open = None
        index, text = len(self.output), "".join(texts)
        if kind == "reasoning":
            item = _reasoning_item(item_id, text)
            events = [self.event("response.reasoning_text.done", item_id=item_id,
                                 output_index=index, content_index=0, text=text)]
        else:
            item = _message_item(item_id, text, "completed")
            location = {"item_id": item_id, "output_index": index, "content_index": 0}
            events = [self.event("response.output_text.done", **location, text=text,
                                 logprobs=[]),
                      self.event("response.content_part.done", **location,
                                 part=_text_part(text))]
        self.output.append(item)
        return [*events, self.event("response.output_item.done", output_index=index, item=item)]

    def _text(self, kind: str, delta: str) -> list[dict[str, Any]]:
        events = []
        if self._open is None or self._open[0] != kind:
            events += self._close()
            item_id = _item_id("rs" if kind == "reasoning" else "msg")
            self._open = (kind, item_id, [])
            added = (_reasoning_item(item_id, None) if kind == "reasoning"
                     else _message_item(item_id, None, "in_progress"))
            events.append(self.event("response.output_item.added",
                                     output_index=len(self.output), item=added))
            if kind == "message":
                events.append(self.event("response.content_part.added", item_id=item_id,
                                         output_index=len(self.output), content_index=0,
                                         part=_text_part("")))
        _, item_id, texts = self._open
        texts.append(delta)
        location = {"item_id": item_id, "output_index": len(self.output), "content_index": 0}
        name = "response.reasoning_text.delta" if kind == "reasoning" else \
            "response.output_text.delta"
        extra: dict[str, Any] = {} if kind == "reasoning" else {"logprobs": []}
        return [*events, self.event(name, **location, delta=delta, **extra)]

    def _function_call(self, call: ToolCall) -> list[dict[str, Any]]:
        events = self._close()
        index, item_id, arguments = len(self.output), _item_id("fc"), json.dumps(call.arguments)
        item = _function_call_item(item_id, call, arguments, "completed")
        events += [
            self.event("response.output_item.added", output_index=index,
                       item={**item, "arguments": "", "status": "in_progress"}),
            self.event("response.function_call_arguments.delta", item_id=item_id,
                       output_index=index, delta=arguments),
            self.event("response.function_call_arguments.done", item_id=item_id,
                       output_index=index, name=call.name, arguments=arguments)]
        self.output.append(item)
        return [*events, self.event("response.output_item.done", output_index=index, item=item)]

    def feed(self, event: Output | Done) -> list[dict[str, Any]]:
        if isinstance(event, Done):
            events = self._close()
            self.finish(event)
            kind = "response.completed" if self.snapshot["status"] == "completed" else \
                "response.incomplete"
            return [*events, self._lifecycle(kind)]
        events = []
        if event.thinking:
            events += self._text("reasoning", event.thinking)
        if event.content:
            events += self._text("message", event.content)
        for call in event.tool_calls:
            events += self._function_call(call)
        return events

    def finish(self, done: Done) -> None:
        t = done.timings
        if done.reason == "length":
            self.snapshot["status"] = "incomplete"
            self.snapshot["incomplete_details"] = {"reason": "max_output_tokens"}
        else:
            self.snapshot["status"] = "completed"
        self.snapshot["usage"] = {
            "input_tokens": t.prompt_tokens,
            "input_tokens_details": {"cached_tokens": t.prompt_cached},
            "output_tokens": t.eval_count,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": t.prompt_tokens + t.eval_count,
        }


async def responses(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, schemas.ResponsesRequest, state.max_body_bytes)
    if body.previous_response_id is not None:
        raise BadRequestError("previous_response_id is not supported: homeport keeps no responses; "
                              "send the whole conversation in input")
    record = resolve_model(request, body.model)
    if not body.input:
        raise BadRequestError("input is required")
    tools, options = _tools(body), _options(body)
    generation = await start_generation(request, GenerationInput(
        record=record, options=options, messages=_messages(body), tools=tools,
        format=_format(body.text),
        think=_think(body.reasoning, record)))
    response = _Response(body, tools, options)
    if body.stream:
        return StreamResponse(generation.encoded(
            lambda event: [sse_event(item) for item in response.feed(event)],
            lambda exc: sse_event(response.event("error", code=None, message=exc.message,
                                                 param=None)),
            before=[sse_event(item) for item in response.start()]), SSE)
    answer = await generation.whole(request.receive)
    if answer.thinking:
        response.output.append(_reasoning_item(_item_id("rs"), answer.thinking))
    if answer.content or not answer.tool_calls:
        response.output.append(_message_item(_item_id("msg"), answer.content, "completed"))
    response.output.extend(_function_call_item(_item_id("fc"), call, json.dumps(call.arguments),
                                               "completed") for call in answer.tool_calls)
    response.finish(answer.done)
    return JSONResponse(response.snapshot)


routes = [Route("/v1/responses", responses, methods=["POST"])]
