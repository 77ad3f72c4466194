"""Anthropic's Messages API (``POST /v1/messages``), as newer Ollama serves it, on the same engine.

So Claude Code and the official ``anthropic`` SDK can use a home model:
``ANTHROPIC_BASE_URL=http://host:11434``. Content blocks map onto chat messages: text to content,
``tool_use`` to tool calls, ``tool_result`` to tool messages, ``thinking`` to thinking. Streams are
SSE with named events: ``message_start``, then per content block ``content_block_start``,
``content_block_delta`` (``text_delta``, ``thinking_delta``, ``input_json_delta``) and
``content_block_stop``, then ``message_delta`` (the stop reason, the output tokens) and
``message_stop``; an error after the stream started is one ``error`` event.

Every request shape the current API takes is accepted, as Ollama accepts it: system messages among
the messages (Claude Code sends one), ``cache_control``, ``metadata``, ``service_tier``,
``container``, ``context_management`` (ignored). Blocks the engine cannot use (a PDF document,
server tool records) are skipped with a log line; a plain-text document is read as text. Server
tools (``web_search_…``, ``code_execution_…``) are dropped, since only Anthropic runs them;
client-side built-ins (``bash_…``, ``text_editor_…``) are functions the client runs.

Not supported: images (the engine has no vision), forcing a tool (``tool_choice`` any or tool
lets the model choose), and telling a stop sequence from the end of the turn (both are
``end_turn``). ``output_config.format`` (structured outputs) becomes ``format``; sampling
settings the SDK no longer sends (temperature, top_p, top_k) are still read when present.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from homeport.api import schemas
from homeport.api.access import max_num_ctx, start_generation
from homeport.api.body import read_json
from homeport.api.common import function_tool, resolve_model, state_of, template_tool_call
from homeport.api.errors import anthropic_error_body
from homeport.api.streaming import SSE, StreamResponse, cancel_on_disconnect, sse_named_event
from homeport.engine.parsing import ToolCall
from homeport.engine.service import ChatMessage, Done, GenerationInput, Output, Timings
from homeport.engine.templates import template_features
from homeport.errors import BadRequestError
from homeport.store import ModelRecord

log = logging.getLogger(__name__)


def _text_of(content: Any) -> str:
    """The text of a string or of a list of blocks (a system prompt, a tool result, a document's
    content): its text blocks; other blocks (images, search results) carry no text here."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "\n".join(block["text"] for block in content
                     if isinstance(block, dict) and block.get("type") == "text"
                     and isinstance(block.get("text"), str))


def _document_text(block: dict[str, Any]) -> str | None:
    """A document's text when it has one (a plain-text or content source); None for a PDF or a
    URL, which the engine cannot read."""
    source = block.get("source")
    if not isinstance(source, dict):
        return None
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        text: str = source["data"]
    elif source.get("type") == "content":
        text = _text_of(source.get("content"))
    else:
        return None
    title = block.get("title")
    return f"{title}\n{text}" if isinstance(title, str) and title else text


# Blocks that record a server tool's work (web search, code execution...): homeport runs no
# server tools, and an earlier conversation's records are only history the model can do without.
_SERVER_TOOL_BLOCKS = {"server_tool_use", "mcp_tool_use", "mcp_tool_result", "container_upload",
                       "search_result"}


def _messages(body: schemas.AnthropicMessagesRequest) -> list[ChatMessage]:
    """The request's system prompt and messages as chat messages, block by block. Blocks the
    engine cannot use are skipped with a log line, as Ollama skips them, never refused."""
    converted: list[ChatMessage] = []
    if body.system:
        converted.append(ChatMessage("system", _text_of(body.system)))
    tool_names: dict[str, str] = {}  # tool_use id -> tool name, for the results that answer it
    for index, message in enumerate(body.messages):
        if isinstance(message.content, str):
            converted.append(ChatMessage(message.role, message.content))
            continue
        texts: list[str] = []
        thinking: list[str] = []
        calls: list[dict[str, Any]] = []
        images: list[str] = []
        for block in message.content:
            kind = block.get("type")
            if kind == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif kind == "image":
                source = block.get("source")
                images.append(str(source.get("data", "")) if isinstance(source, dict) else "")
            elif kind == "document" and (text := _document_text(block)) is not None:
                texts.append(text)
            elif kind == "thinking" and isinstance(block.get("thinking"), str):
                thinking.append(block["thinking"])
            elif kind == "redacted_thinking":
                continue  # encrypted thoughts of another model
            elif kind == "tool_use":
                name, call_id = str(block.get("name", "")), str(block.get("id", ""))
                arguments = block.get("input")
                tool_names[call_id] = name
                calls.append(template_tool_call(
                    call_id, name, arguments if isinstance(arguments, dict) else {}))
            elif kind == "tool_result":
                call_id = str(block.get("tool_use_id", ""))
                converted.append(ChatMessage("tool", _text_of(block.get("content")),
                                             tool_call_id=call_id,
                                             tool_name=tool_names.get(call_id)))
            elif kind in _SERVER_TOOL_BLOCKS or str(kind).endswith("_tool_result"):
                continue
            else:
                log.info("messages.%d: skipped a %r block the engine cannot use", index, kind)
        if texts or calls or thinking or images:
            converted.append(ChatMessage(message.role, "\n".join(texts),
                                         thinking="".join(thinking) or None, images=images,
                                         tool_calls=calls or None))
    return converted


def _options(body: schemas.AnthropicMessagesRequest) -> dict[str, Any]:
    options: dict[str, Any] = {"temperature": 1.0 if body.temperature is None else body.temperature}
    if body.max_tokens is not None:
        options["num_predict"] = body.max_tokens
    if body.top_p is not None:
        options["top_p"] = body.top_p
    if body.top_k is not None:
        options["top_k"] = body.top_k
    if body.stop_sequences:
        options["stop"] = body.stop_sequences
    return options


# Anthropic's server tools run on Anthropic's side; homeport cannot run them, so they are left
# out of the prompt. Client-side built-ins (bash, text_editor, computer, memory) are the
# client's to run: the model sees them as functions by their name.
_SERVER_TOOL_TYPES = ("web_search_", "web_fetch_", "code_execution_", "tool_search_",
                      "mcp_toolset")


def _tools(body: schemas.AnthropicMessagesRequest) -> list[dict[str, Any]] | None:
    if not body.tools or (body.tool_choice is not None and body.tool_choice.type == "none"):
        return None
    tools = []
    for tool in body.tools:
        if tool.type is not None and tool.type.startswith(_SERVER_TOOL_TYPES):
            log.info("tool %r (%s) dropped: homeport runs no server tools", tool.name, tool.type)
            continue
        tools.append(function_tool(tool.name, tool.description, tool.input_schema))
    return tools or None


def _counted_messages(body: schemas.AnthropicMessagesRequest, record: ModelRecord,
                      tools: list[dict[str, Any]] | None) -> list[ChatMessage]:
    """The messages to count. A template that cannot show tools would leave them out of the
    count while the model still has to be told of them: their JSON counts as a system message."""
    messages = _messages(body)
    if tools and not template_features(record.chat_template).tools:
        described = json.dumps(tools)
        if messages and messages[0].role == "system":  # templates want the system prompt first
            messages[0] = replace(messages[0], content=f"{messages[0].content}\n\n{described}")
        else:
            messages.insert(0, ChatMessage("system", described))
    return messages


def _think(thinking: schemas.AnthropicThinking | None, record: ModelRecord) -> bool | None:
    """Thinking as asked, for a model that can think. Claude Code asks every model to; a model
    that cannot simply answers (the native APIs refuse ``think`` there instead)."""
    if thinking is None or not template_features(record.chat_template).thinking:
        return None
    return thinking.type != "disabled"


def _format(config: schemas.AnthropicOutputConfig | None) -> dict[str, Any] | None:
    """Structured outputs: the answer follows the JSON schema (a grammar, as ``format`` does)."""
    return config.format.schema_ if config is not None and config.format is not None else None


def _stop_reason(done: Done, has_tool_calls: bool) -> str:
    if has_tool_calls:
        return "tool_use"
    return "max_tokens" if done.reason == "length" else "end_turn"


def _usage(timings: Timings) -> dict[str, int]:
    """Anthropic counts prompt tokens read from the cache apart from the rest of the input."""
    return {"input_tokens": timings.prompt_eval_count, "output_tokens": timings.eval_count,
            "cache_read_input_tokens": timings.prompt_cached,
            "cache_creation_input_tokens": 0}


def _tool_use(call: ToolCall) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_{secrets.token_hex(12)}", "name": call.name,
            "input": call.arguments}


class _BlockStream:
    """Turns the engine's events into the SSE events of one message's content blocks."""

    def __init__(self) -> None:
        self.index = -1
        self.open_kind = ""  # "text" or "thinking" while such a block takes deltas
        self.saw_tool_calls = False

    def _close(self) -> list[bytes]:
        if not self.open_kind:
            return []
        self.open_kind = ""
        return [sse_named_event("content_block_stop",
                                {"type": "content_block_stop", "index": self.index})]

    def _delta(self, kind: str, text: str) -> list[bytes]:
        events = []
        if self.open_kind != kind:
            events += self._close()
            self.index += 1
            self.open_kind = kind
            events.append(sse_named_event("content_block_start", {
                "type": "content_block_start", "index": self.index,
                "content_block": {"type": kind, kind: ""}}))
        delta = {"type": f"{kind}_delta", kind: text}
        events.append(sse_named_event("content_block_delta", {
            "type": "content_block_delta", "index": self.index, "delta": delta}))
        return events

    def events(self, event: Output | Done) -> list[bytes]:
        if isinstance(event, Done):
            return [
                *self._close(),
                sse_named_event("message_delta", {
                    "type": "message_delta",
                    "delta": {"stop_reason": _stop_reason(event, self.saw_tool_calls),
                              "stop_sequence": None},
                    "usage": _usage(event.timings)}),
                sse_named_event("message_stop", {"type": "message_stop"})]
        events = []
        if event.thinking:
            events += self._delta("thinking", event.thinking)
        if event.content:
            events += self._delta("text", event.content)
        for call in event.tool_calls:
            self.saw_tool_calls = True
            block = _tool_use(call)
            events += self._close()
            self.index += 1
            events += [
                sse_named_event("content_block_start", {
                    "type": "content_block_start", "index": self.index,
                    "content_block": {**block, "input": {}}}),
                sse_named_event("content_block_delta", {
                    "type": "content_block_delta", "index": self.index,
                    "delta": {"type": "input_json_delta",
                              "partial_json": json.dumps(call.arguments)}}),
                sse_named_event("content_block_stop",
                                {"type": "content_block_stop", "index": self.index})]
        return events


async def messages(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, schemas.AnthropicMessagesRequest, state.max_body_bytes)
    record = resolve_model(request, body.model)
    if not body.messages:
        raise BadRequestError("messages: at least one message is required")
    generation = await start_generation(request, GenerationInput(
        record=record, options=_options(body), messages=_messages(body), tools=_tools(body),
        think=_think(body.thinking, record), format=_format(body.output_config)))
    message: dict[str, Any] = {
        "id": f"msg_{secrets.token_hex(12)}", "type": "message", "role": "assistant",
        "model": body.model, "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0}}  # the counts come with message_delta
    if body.stream:
        opening = sse_named_event("message_start", {"type": "message_start", "message": message})
        return StreamResponse(generation.encoded(
            _BlockStream().events,
            lambda exc: sse_named_event("error", anthropic_error_body(exc.status, exc.message)),
            before=[opening]), SSE)

    answer = await generation.whole(request.receive)
    content: list[dict[str, Any]] = []
    if answer.thinking:
        content.append({"type": "thinking", "thinking": answer.thinking, "signature": ""})
    if answer.content or not answer.tool_calls:
        content.append({"type": "text", "text": answer.content})
    content += [_tool_use(call) for call in answer.tool_calls]
    return JSONResponse({**message, "content": content,
                         "stop_reason": _stop_reason(answer.done, bool(answer.tool_calls)),
                         "usage": _usage(answer.done.timings)})


async def count_tokens(request: Request) -> Response:
    """``/v1/messages/count_tokens``: the prompt's size in this model's tokens (Claude Code asks
    often, to know when to compact its context)."""
    state = state_of(request)
    body = await read_json(request, schemas.AnthropicMessagesRequest, state.max_body_bytes)
    record = resolve_model(request, body.model)
    if not body.messages:
        raise BadRequestError("messages: at least one message is required")
    tools = _tools(body)
    count = await cancel_on_disconnect(request.receive, state.engine.count_prompt_tokens(
        GenerationInput(record=record, messages=_counted_messages(body, record, tools),
                        tools=tools, think=_think(body.thinking, record),
                        max_num_ctx=max_num_ctx(request))))
    return JSONResponse({"input_tokens": count})


routes = [
    Route("/v1/messages", messages, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
]
