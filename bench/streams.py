"""One streamed chat request, timed from the client side.

The client speaks either OpenAI's ``/v1/chat/completions`` (SSE) or Ollama's ``/api/chat`` (NDJSON)
and records when it sent the request, when the first piece of text arrived, when each later piece
arrived and how the stream ended. Token counts come from the server's own usage figures where it
gives them (OpenAI ``usage.completion_tokens``, Ollama ``eval_count``), otherwise from the number
of text pieces received. A stream that ends without a finish reason was cut short by the server.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import httpx

from bench.prompts import Message

Protocol = Literal["openai", "ollama"]
SEED = 42  # every peer, and the raw engine, sample with it (at temperature 0 it only breaks ties)
STREAM_LIMIT = 300.0  # seconds one stream may take in all, however slowly it trickles
# A queued request legitimately receives nothing until a slot frees: only the total is bounded.
STREAM_TIMEOUT = httpx.Timeout(STREAM_LIMIT, connect=10.0)


@dataclass(frozen=True)
class Endpoint:
    """Where a peer listens and how to ask it for a 128-token, greedy answer."""

    base_url: str
    protocol: Protocol
    model: str
    # Fields added to every request body, e.g. llama-server's ignore_eos.
    extra_body: dict[str, Any] = field(default_factory=dict)


@dataclass
class StreamResult:
    """What the client saw of one stream; times are ``time.perf_counter()`` seconds."""

    started: float
    ended: float = 0.0
    first_token: float | None = None
    last_token: float | None = None
    pieces: int = 0
    usage_tokens: int | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    evaluated_tokens: int | None = None  # prompt tokens the server evaluated (not from its cache)
    finish_reason: str | None = None
    error: str | None = None
    text: str = ""

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.pieces

    @property
    def completed(self) -> bool:
        """The server ended the stream itself, with a finish reason and without an error."""
        return self.error is None and self.finish_reason is not None

    @property
    def prompt_evaluated(self) -> int | None:
        if self.evaluated_tokens is not None:
            return self.evaluated_tokens
        if self.prompt_tokens is not None and self.cached_tokens is not None:
            return self.prompt_tokens - self.cached_tokens
        return None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started

    @property
    def decode_rate(self) -> float | None:
        """Tokens per second after the first one (prompt evaluation excluded)."""
        if self.first_token is None or self.last_token is None or self.tokens < 2:
            return None
        elapsed = self.last_token - self.first_token
        return (self.tokens - 1) / elapsed if elapsed > 0 else None


Result = TypeVar("Result", bound=StreamResult)  # a stream's result, with whatever its protocol adds


def request_body(endpoint: Endpoint, messages: list[Message], max_tokens: int,
                 seed: int) -> tuple[str, dict[str, Any]]:
    """The path and JSON body of a streamed, greedy chat request of ``max_tokens`` tokens."""
    if endpoint.protocol == "ollama":
        return "/api/chat", {
            "model": endpoint.model, "messages": messages, "stream": True,
            "options": {"temperature": 0, "seed": seed, "num_predict": max_tokens},
            **endpoint.extra_body,
        }
    return "/v1/chat/completions", {
        "model": endpoint.model, "messages": messages, "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens, "temperature": 0, "seed": seed,
        **endpoint.extra_body,
    }


async def stream_chat(client: httpx.AsyncClient, endpoint: Endpoint, messages: list[Message],
                      max_tokens: int, seed: int = SEED) -> StreamResult:
    """Send one streamed chat request and time it; errors are recorded, never raised."""
    path, body = request_body(endpoint, messages, max_tokens, seed)
    result = StreamResult(started=time.perf_counter())
    parse = _openai_line if endpoint.protocol == "openai" else _ollama_line
    return await timed_stream(client, endpoint.base_url + path, body, result, parse)


async def timed_stream(client: httpx.AsyncClient, url: str, body: dict[str, Any], result: Result,
                       parse: Callable[[str, Result], bool]) -> Result:
    """POST ``body`` to ``url`` and feed each streamed line to ``parse`` until it says the stream
    is over; the end time, a bad status, a timeout or a broken stream are recorded in ``result``,
    never raised."""
    try:
        async with asyncio.timeout(STREAM_LIMIT), client.stream(
                "POST", url, json=body, timeout=STREAM_TIMEOUT) as response:
            if response.status_code != 200:
                await response.aread()
                result.error = f"HTTP {response.status_code}: {response.text[:200]}"
            else:
                async for line in response.aiter_lines():
                    if parse(line, result):
                        break
    except TimeoutError:
        result.error = f"the stream did not end within {STREAM_LIMIT:.0f}s"
    except (httpx.HTTPError, ValueError) as exc:  # ValueError: a line that is not JSON
        result.error = type(exc).__name__ + (f": {exc}" if str(exc) else "")
    result.ended = time.perf_counter()
    return result


def record_text(result: StreamResult, text: str) -> None:
    """One piece of the answer arrived now."""
    now = time.perf_counter()
    if result.first_token is None:
        result.first_token = now
    result.last_token = now
    result.pieces += 1
    result.text += text


def _openai_line(line: str, result: StreamResult) -> bool:
    """Take one SSE line into ``result``; True once the stream is over."""
    if not line.startswith("data:"):
        return False  # blank separators, comments and pings
    data = line[len("data:"):].strip()
    if data == "[DONE]":
        return True
    chunk = json.loads(data)
    if "error" in chunk:
        result.error = str(chunk["error"])
        return True
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        text = (delta.get("content") or "") + (delta.get("reasoning_content") or "")
        if text:
            record_text(result, text)
        if choice.get("finish_reason"):
            result.finish_reason = choice["finish_reason"]
    usage = chunk.get("usage")
    if usage:
        result.usage_tokens = usage.get("completion_tokens")
        result.prompt_tokens = usage.get("prompt_tokens")
        details = usage.get("prompt_tokens_details") or {}
        result.cached_tokens = details.get("cached_tokens")
    timings = chunk.get("timings")  # llama-server's own figures
    if timings:
        result.cached_tokens = timings.get("cache_n", result.cached_tokens)
        result.evaluated_tokens = timings.get("prompt_n", result.evaluated_tokens)
    return False


def _ollama_line(line: str, result: StreamResult) -> bool:
    """Take one NDJSON line of /api/chat into ``result``; True once the stream is over."""
    return ollama_record(line, result, _chat_text)


def _chat_text(record: dict[str, Any]) -> str:
    message = record.get("message") or {}
    return (message.get("content") or "") + (message.get("thinking") or "")


def ollama_record(line: str, result: StreamResult, text_of: Callable[[dict[str, Any]], str]) -> bool:
    """Take one line of an Ollama NDJSON stream into ``result``, ``text_of`` finding the answer's
    text in the record (chat and generate keep it apart); True once the stream is over."""
    if not line.strip():
        return False
    record = json.loads(line)
    if "error" in record:
        result.error = str(record["error"])
        return True
    text = text_of(record)
    if text:
        record_text(result, text)
    if record.get("done"):
        result.finish_reason = record.get("done_reason") or "stop"
        result.usage_tokens = record.get("eval_count")
        # Ollama counts only the prompt tokens it evaluated, not those served from its cache.
        result.evaluated_tokens = record.get("prompt_eval_count")
        return True
    return False
