"""One streamed raw completion (no chat template), timed from the client side.

homeport is asked through Ollama's ``/api/generate`` with ``raw: true``; llama-server through its
own ``/completion``. Both are greedy and bounded by ``max_tokens``; neither ignores the end of text,
so the same model writes the same tokens on both. llama-server's last event also says how many
tokens its speculative decoding drafted and how many of them it accepted.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import httpx

from bench.streams import SEED, Endpoint, StreamResult, ollama_record, record_text, timed_stream


@dataclass
class CompletionResult(StreamResult):
    drafted: int | None = None
    accepted: int | None = None


def completion_body(endpoint: Endpoint, prompt: str, max_tokens: int) -> tuple[str, dict[str, object]]:
    if endpoint.protocol == "ollama":
        return "/api/generate", {
            "model": endpoint.model, "prompt": prompt, "raw": True, "stream": True,
            "options": {"temperature": 0, "seed": SEED, "num_predict": max_tokens},
        }
    return "/completion", {
        "prompt": prompt, "stream": True, "n_predict": max_tokens, "temperature": 0,
        "seed": SEED, "cache_prompt": True,
    }


async def stream_completion(client: httpx.AsyncClient, endpoint: Endpoint, prompt: str,
                            max_tokens: int) -> CompletionResult:
    """Send one streamed raw completion and time it; errors are recorded, never raised."""
    path, body = completion_body(endpoint, prompt, max_tokens)
    result = CompletionResult(started=time.perf_counter())
    parse = _generate_line if endpoint.protocol == "ollama" else _completion_line
    return await timed_stream(client, endpoint.base_url + path, body, result, parse)


def _generate_line(line: str, result: CompletionResult) -> bool:
    """One NDJSON line of Ollama's /api/generate; True once the stream is over."""
    return ollama_record(line, result, lambda record: record.get("response") or "")


def _completion_line(line: str, result: CompletionResult) -> bool:
    """One SSE event of llama-server's /completion; True once the stream is over."""
    if not line.startswith("data:"):
        return False
    event = json.loads(line[len("data:"):].strip())
    if "error" in event:
        result.error = str(event["error"])
        return True
    if event.get("content"):
        record_text(result, event["content"])
    if not event.get("stop"):
        return False
    result.finish_reason = event.get("stop_type") or "stop"
    result.usage_tokens = event.get("tokens_predicted")
    timings = event.get("timings") or {}
    result.evaluated_tokens = timings.get("prompt_n")
    result.cached_tokens = timings.get("cache_n")
    result.drafted = timings.get("draft_n")
    result.accepted = timings.get("draft_n_accepted")
    return True
