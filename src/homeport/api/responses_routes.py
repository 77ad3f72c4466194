"""OpenAI's Responses API (``POST /v1/responses``), stateless, as newer Ollama serves it.

The ``openai`` package's ``client.responses`` and Codex work against a home model. ``input`` is a
string or a list of items: messages (text parts), ``function_call``/``custom_tool_call`` and their
outputs; items the engine has no use for (reasoning, hosted tools' records) are skipped.
``instructions`` is the system prompt. The answer's ``output`` holds a ``reasoning`` item (a
thinking model's thoughts), a ``message`` item and ``function_call`` (or ``custom_tool_call``)
items. Streams are SSE, each event named by an ``event:`` line as OpenAI names them:
``response.created``, ``response.in_progress``, then per item ``response.output_item.added`` ...
``response.output_item.done`` (text through ``response.content_part.*`` and
``response.output_text.*``, arguments through ``response.function_call_arguments.*`` or
``response.custom_tool_call_input.*``), and ``response.completed``, or ``response.incomplete``
(its message item ``incomplete`` too) when ``max_output_tokens`` cut the answer.

Tools as Codex sends them: a ``namespace`` becomes its member functions, shown to the model as
``namespace.name`` (as Ollama shows them) and called back by their own name with a ``namespace``
field, which is how Codex routes a call; a ``custom`` tool is a function of one string ``input``,
answered as a ``custom_tool_call``. Hosted tools (``web_search``, ``file_search``, ``mcp``...) run
on OpenAI's side, so they are dropped with a log line. Request fields the engine has no use for
(``include``, ``store``, ``prompt_cache_key``, ``parallel_tool_calls``, ``text.verbosity``,
``client_metadata``...) are ignored.

Stateless only: ``previous_response_id`` is refused (nothing is stored).
"""

from __future__ import annotations

import copy
import json
import logging
import secrets
import time
from dataclasses import dataclass
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
from homeport.api.streaming import SSE, StreamResponse, sse_named_event
from homeport.engine.parsing import ToolCall
from homeport.engine.service import ChatMessage, Done, GenerationInput, Output
from homeport.engine.templates import template_features
from homeport.errors import BadRequestError
from homeport.store import ModelRecord

log = logging.getLogger(__name__)


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _image_data(url: Any) -> str:
    """An ``input_image``'s base64 data (a data URL's payload); the engine says whether the model
    can see it."""
    return url.split(",", 1)[-1] if isinstance(url, str) else ""


def _parts(content: Any, where: str) -> tuple[str, list[str]]:
    """A message's (or a tool output's) text and images: a string, or a list of parts."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise BadRequestError(f"{where}.content must be a string or a list of parts")
    texts, images = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "input_image":
            images.append(_image_data(part.get("image_url")))
        else:
            log.info("%s: skipped a %r part the engine cannot use", where, kind)
    return "".join(texts), images


@dataclass(frozen=True)
class _ToolRoute:
    """Who a tool the model calls is, to the client: its own name, its namespace, and whether it is
    a custom tool (one free-form text input) rather than a function."""

    name: str
    namespace: str | None = None
    custom: bool = False


def _shown_name(namespace: str | None, name: str) -> str:
    """The name the model knows a tool by (Ollama's flat ``namespace.name``)."""
    return f"{namespace}.{name}" if namespace else name


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
            text, images = _parts(item.get("content"), where)
            converted.append(ChatMessage("system" if role == "developer" else role, text,
                                         images=images))
        elif kind in ("function_call", "custom_tool_call"):
            call_id = str(item.get("call_id", ""))
            namespace = item.get("namespace") if isinstance(item.get("namespace"), str) else None
            name = _shown_name(namespace, str(item.get("name", "")))
            names[call_id] = name
            arguments = (str(item.get("arguments") or "{}") if kind == "function_call"
                         else {"input": str(item.get("input", ""))})
            converted.append(ChatMessage("assistant", tool_calls=[
                template_tool_call(call_id, name, arguments)]))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = str(item.get("call_id", ""))
            text, images = _parts(item.get("output"), where)
            converted.append(ChatMessage("tool", text, images=images, tool_call_id=call_id,
                                         tool_name=names.get(call_id)))
        else:  # reasoning (earlier thoughts), hosted tools' records: not part of the prompt
            log.debug("%s: skipped a %r item", where, kind)
    return converted


def _custom_tool_parameters(tool: schemas.ResponsesTool) -> dict[str, Any]:
    """A custom tool as a function: one string, described by the tool's grammar if it has one."""
    described = "The tool's input, as free-form text."
    grammar = tool.format or {}
    if grammar.get("type") == "grammar" and isinstance(grammar.get("definition"), str):
        described = (f"The tool's input, following this {grammar.get('syntax', '')} grammar:\n"
                     f"{grammar['definition']}")
    return {"type": "object", "required": ["input"],
            "properties": {"input": {"type": "string", "description": described}}}


def _flatten(tool: schemas.ResponsesTool, namespace: str | None,
             functions: list[dict[str, Any]], routes: dict[str, _ToolRoute]) -> None:
    """Adds ``tool`` (a namespace's members, each in turn) as functions the model can call."""
    if tool.type == "namespace":
        for member in tool.tools or []:
            _flatten(member, tool.name or namespace, functions, routes)
    elif tool.type in ("function", "custom") and tool.name:
        shown = _shown_name(namespace, tool.name)
        custom = tool.type == "custom"
        functions.append(function_tool(shown, tool.description, _custom_tool_parameters(tool)
                                       if custom else tool.parameters))
        routes[shown] = _ToolRoute(tool.name, namespace, custom)
    else:
        log.info("tool %r of type %r dropped: homeport runs only functions and custom tools",
                 tool.name, tool.type)


def _tools(body: schemas.ResponsesRequest) -> tuple[list[dict[str, Any]] | None,
                                                     dict[str, _ToolRoute]]:
    """The tools as functions the chat template shows, and how each call goes back."""
    if not body.tools or body.tool_choice == "none":
        return None, {}
    functions: list[dict[str, Any]] = []
    routes: dict[str, _ToolRoute] = {}
    for tool in body.tools:
        _flatten(tool, None, functions, routes)
    return functions or None, routes


def _format(text: schemas.ResponsesText | None) -> str | dict[str, Any] | None:
    if text is None or text.format is None or text.format.type == "text":
        return None
    if text.format.type == "json_object":
        return "json"
    if text.format.schema_ is None:
        raise BadRequestError("text.format.schema is required for json_schema")
    return text.format.schema_


# OpenAI's effort scale reaches past the engine's at both ends (Codex sends "minimal" and
# "xhigh"): those take the nearest tier, as Ollama does, rather than a 400.
_NEAREST_EFFORT = {"minimal": "low", "xhigh": "high", "max": "high"}


def _think(reasoning: schemas.ResponsesReasoning | None, record: ModelRecord
           ) -> bool | str | None:
    """``reasoning.effort`` for a model that can think; ignored by one that cannot, since
    clients of this API send it by default."""
    if reasoning is None or not template_features(record.chat_template).thinking:
        return None
    effort = reasoning.effort
    return think_from_effort(_NEAREST_EFFORT.get(effort, effort) if effort else effort)


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


def _tool_call_item(item_id: str, call: ToolCall, routes: dict[str, _ToolRoute]
                    ) -> dict[str, Any]:
    """A call as the client knows the tool: a ``function_call`` with its JSON arguments, or a
    ``custom_tool_call`` with its text input; by the tool's own name, with its namespace."""
    route = routes.get(call.name, _ToolRoute(call.name))
    item: dict[str, Any] = {"type": "function_call", "id": item_id, "call_id": tool_call_id(),
                            "name": route.name, "arguments": json.dumps(call.arguments),
                            "status": "completed"}
    if route.custom:
        text = call.arguments.get("input")
        del item["arguments"]
        item.update(type="custom_tool_call",
                    input=text if isinstance(text, str) else json.dumps(call.arguments))
    if route.namespace is not None:
        item["namespace"] = route.namespace
    return item


def _message_status(done: Done) -> str:
    """A message cut by the token limit is ``incomplete``, as its response is."""
    return "incomplete" if done.reason == "length" else "completed"


class _Response:
    """The response object as it grows, and the stream events that tell of each change."""

    def __init__(self, body: schemas.ResponsesRequest, tools: list[dict[str, Any]] | None,
                 routes: dict[str, _ToolRoute], options: dict[str, Any]) -> None:
        self.routes = routes
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

    def _close(self, status: str = "completed") -> list[dict[str, Any]]:
        """Ends the open text item; ``status`` is its message's (incomplete when cut short)."""
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
            item = _message_item(item_id, text, status)
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

    def _tool_call(self, call: ToolCall) -> list[dict[str, Any]]:
        events = self._close()
        index, item_id = len(self.output), _item_id("fc")
        item = _tool_call_item(item_id, call, self.routes)
        location = {"item_id": item_id, "output_index": index}
        if item["type"] == "custom_tool_call":
            added = {**item, "input": "", "status": "in_progress"}
            progress = [
                self.event("response.custom_tool_call_input.delta", **location,
                           delta=item["input"]),
                self.event("response.custom_tool_call_input.done", **location,
                           input=item["input"])]
        else:
            added = {**item, "arguments": "", "status": "in_progress"}
            progress = [
                self.event("response.function_call_arguments.delta", **location,
                           delta=item["arguments"]),
                self.event("response.function_call_arguments.done", **location,
                           name=item["name"], arguments=item["arguments"])]
        events += [self.event("response.output_item.added", output_index=index, item=added),
                   *progress]
        self.output.append(item)
        return [*events, self.event("response.output_item.done", output_index=index, item=item)]

    def feed(self, event: Output | Done) -> list[dict[str, Any]]:
        if isinstance(event, Done):
            events = self._close(_message_status(event))
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
            events += self._tool_call(call)
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


def _sse(event: dict[str, Any]) -> bytes:
    """An event as OpenAI streams it: named by an ``event:`` line as well as by its type."""
    return sse_named_event(event["type"], event)


async def responses(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, schemas.ResponsesRequest, state.max_body_bytes)
    if body.previous_response_id is not None:
        raise BadRequestError("previous_response_id is not supported: homeport keeps no responses; "
                              "send the whole conversation in input")
    record = resolve_model(request, body.model)
    if not body.input:
        raise BadRequestError("input is required")
    (tools, routes), options = _tools(body), _options(body)
    generation = await start_generation(request, GenerationInput(
        record=record, options=options, messages=_messages(body), tools=tools,
        format=_format(body.text),
        think=_think(body.reasoning, record)))
    response = _Response(body, tools, routes, options)
    if body.stream:
        return StreamResponse(generation.encoded(
            lambda event: [_sse(item) for item in response.feed(event)],
            lambda exc: _sse(response.event("error", code=None, message=exc.message,
                                            param=None)),
            before=[_sse(item) for item in response.start()]), SSE)
    answer = await generation.whole(request.receive)
    if answer.thinking:
        response.output.append(_reasoning_item(_item_id("rs"), answer.thinking))
    if answer.content or not answer.tool_calls:
        response.output.append(_message_item(_item_id("msg"), answer.content,
                                             _message_status(answer.done)))
    response.output.extend(_tool_call_item(_item_id("fc"), call, routes)
                           for call in answer.tool_calls)
    response.finish(answer.done)
    return JSONResponse(response.snapshot)


routes = [Route("/v1/responses", responses, methods=["POST"])]
