"""Splitting a model's raw output stream into content, thinking and tool calls.

Thinking: text between ``<think>`` and ``</think>`` (or from the start, when the prompt already
opened the block) goes to ``thinking``, never to ``content``. Tool calls: when the request offered
tools, ``<tool_call>{json}</tool_call>`` blocks (Hermes/Qwen style), ``[TOOL_CALLS]`` lists (Mistral)
or an answer that is a bare JSON object or list naming an offered tool (Llama 3.1 style) become
structured calls with object arguments. Text that only looks like a call is given back as content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"
MISTRAL_TOOLS = "[TOOL_CALLS]"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    index: int = 0


@dataclass(frozen=True)
class Delta:
    content: str = ""
    thinking: str = ""


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that could begin ``marker``."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


def _as_calls(value: Any, tool_names: set[str], start: int) -> list[ToolCall] | None:
    items = value if isinstance(value, list) else [value]
    calls = []
    for offset, item in enumerate(items):
        if not isinstance(item, dict):
            return None
        nested = item.get("function")
        function: dict[str, Any] = nested if isinstance(nested, dict) else item
        name = function.get("name")
        arguments = function.get("arguments", function.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(name, str) or not isinstance(arguments, dict):
            return None
        if tool_names and name not in tool_names:
            return None
        calls.append(ToolCall(name, arguments, start + offset))
    return calls or None


class OutputParser:
    """Feed raw text chunks in order; get content/thinking deltas and, at the end, tool calls."""

    def __init__(self, *, thinking: bool, in_thinking: bool, tool_names: set[str] | None) -> None:
        self.thinking_enabled = thinking
        self.in_thinking = in_thinking and thinking
        self.tool_names = tool_names
        self.tool_calls: list[ToolCall] = []
        self._pending = ""  # text held back: a marker may be forming
        self._tool_buffer: str | None = None  # inside a tool call block or a bare JSON answer
        self._seen_content = False
        self._strip_newlines = self.in_thinking

    def feed(self, text: str) -> list[Delta]:
        self._pending += text
        return self._drain(final=False)

    def finish(self) -> list[Delta]:
        deltas = self._drain(final=True)
        if self._tool_buffer is not None:
            buffered, self._tool_buffer = self._tool_buffer, None
            if not self._parse_tool_text(buffered):
                deltas.append(Delta(content=buffered))
        return [delta for delta in deltas if delta.content or delta.thinking]

    def _drain(self, final: bool) -> list[Delta]:
        deltas: list[Delta] = []
        while self._pending:
            before = len(self._pending)
            deltas.extend(self._step(final))
            if len(self._pending) == before:
                break
        return deltas

    def _step(self, final: bool) -> list[Delta]:
        if self._strip_newlines:
            # Newlines right after <think> or </think> belong to the markup, not the text.
            self._pending = self._pending.lstrip("\n")
            if not self._pending:
                return []
            self._strip_newlines = False
        text = self._pending
        if self.in_thinking:
            end = text.find(THINK_CLOSE)
            if end >= 0:
                self.in_thinking = False
                self._pending = text[end + len(THINK_CLOSE):]
                self._strip_newlines = True
                return [Delta(thinking=text[:end])]
            keep = 0 if final else _partial_suffix(text, THINK_CLOSE)
            self._pending = text[len(text) - keep:]
            return [Delta(thinking=text[:len(text) - keep])]
        if self._tool_buffer is not None:
            return self._step_tool(final)
        if self.thinking_enabled and not self._seen_content:
            stripped = text.lstrip()
            if stripped.startswith(THINK_OPEN):
                self.in_thinking = True
                self._pending = stripped[len(THINK_OPEN):]
                self._strip_newlines = True
                return []
            if not final and THINK_OPEN.startswith(stripped):
                return []
        if self.tool_names is not None:
            return self._step_tool_detect(final)
        self._pending = ""
        self._seen_content = self._seen_content or bool(text.strip())
        return [Delta(content=text)]

    def _step_tool_detect(self, final: bool) -> list[Delta]:
        text = self._pending
        if not self._seen_content:
            stripped = text.lstrip()
            if stripped[:1] in ("{", "["):
                self._tool_buffer, self._pending = stripped, ""
                self._seen_content = True
                return []
            if not stripped and not final:
                return []
        for marker in (TOOL_OPEN, MISTRAL_TOOLS):
            found = text.find(marker)
            if found >= 0:
                self._tool_buffer = ""
                self._pending = text[found + len(marker):]
                self._seen_content = True
                return [Delta(content=text[:found])] if text[:found].strip() else []
        keep = 0 if final else max(_partial_suffix(text, TOOL_OPEN),
                                   _partial_suffix(text, MISTRAL_TOOLS))
        emitted = text[:len(text) - keep]
        self._pending = text[len(text) - keep:]
        self._seen_content = self._seen_content or bool(emitted.strip())
        return [Delta(content=emitted)] if emitted else []

    def _step_tool(self, final: bool) -> list[Delta]:
        assert self._tool_buffer is not None
        self._tool_buffer += self._pending
        self._pending = ""
        end = self._tool_buffer.find(TOOL_CLOSE)
        if end >= 0:
            block, rest = self._tool_buffer[:end], self._tool_buffer[end + len(TOOL_CLOSE):]
            self._tool_buffer = None
            self._pending = rest
            self._strip_newlines = True
            if not self._parse_tool_text(block):
                return [Delta(content=f"{TOOL_OPEN}{block}{TOOL_CLOSE}")]
        return []

    def _parse_tool_text(self, text: str) -> bool:
        text = text.strip().removeprefix(MISTRAL_TOOLS).strip()
        if not text:
            return False
        try:
            value = json.loads(text)
        except ValueError:
            # Several JSON objects in a row, one per line, is common too.
            values = []
            for line in text.splitlines():
                if line.strip():
                    try:
                        values.append(json.loads(line))
                    except ValueError:
                        return False
            value = values
        calls = _as_calls(value, self.tool_names or set(), len(self.tool_calls))
        if calls is None:
            return False
        self.tool_calls.extend(calls)
        return True
