"""The three workloads of issue 3, run against one peer over HTTP.

1. one stream at a time (repeated): decode tokens/s and time to first token;
2. 1, 2, 4, 8 streams started together, each a different prompt: aggregate tokens/s, p50/p95
   time to first token, streams completed;
3. a 10-turn chat whose history grows: time to first token per turn.

Every loop is bounded in count, and every stream in time (``stream_chat``'s limit).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from bench.prompts import CHAT_QUESTIONS, Message, PromptSequence
from bench.results import ChatRun, ConcurrencyLevel, PeerResult, SingleStream, StreamSummary
from bench.streams import Endpoint, StreamResult, stream_chat

WARMUP_TOKENS = 8
Progress = Callable[[str], None]


async def warm_up(client: httpx.AsyncClient, endpoint: Endpoint) -> StreamResult:
    """One short request so that loading the model (homeport loads on demand) is not measured."""
    messages: list[Message] = [{"role": "user", "content": "Say hello."}]
    result = await stream_chat(client, endpoint, messages, WARMUP_TOKENS)
    if result.error:
        raise RuntimeError(f"warm-up request failed: {result.error}")
    return result


async def single_stream(client: httpx.AsyncClient, endpoint: Endpoint, prompts: PromptSequence,
                        max_tokens: int, repeats: int) -> SingleStream:
    runs = []
    for messages in prompts.take(repeats):
        runs.append(StreamSummary.of(await stream_chat(client, endpoint, messages, max_tokens)))
    return SingleStream(runs)


async def concurrent_streams(client: httpx.AsyncClient, endpoint: Endpoint,
                             prompts: PromptSequence, max_tokens: int,
                             streams: int) -> ConcurrencyLevel:
    batch = prompts.take(streams)
    results = await asyncio.gather(
        *(stream_chat(client, endpoint, messages, max_tokens) for messages in batch))
    wall = max(r.ended for r in results) - min(r.started for r in results)
    return ConcurrencyLevel(streams, wall, [StreamSummary.of(r) for r in results])


async def growing_chat(client: httpx.AsyncClient, endpoint: Endpoint, max_tokens: int,
                       turns: int) -> ChatRun:
    """Each turn resends the whole conversation so far, with the answers the server gave."""
    history: list[Message] = []
    summaries = []
    for question in CHAT_QUESTIONS[:turns]:
        history.append({"role": "user", "content": question})
        result = await stream_chat(client, endpoint, history, max_tokens)
        summaries.append(StreamSummary.of(result))
        if result.error:
            break
        history.append({"role": "assistant", "content": result.text})
    return ChatRun(summaries)


async def run_workloads(peer: PeerResult, endpoint: Endpoint, *, max_tokens: int, repeats: int,
                        levels: list[int], turns: int, progress: Progress) -> None:
    """Run all three workloads against ``endpoint``, filling in ``peer``."""
    limits = httpx.Limits(max_connections=max(levels, default=1) + 4)
    async with httpx.AsyncClient(limits=limits) as client:
        progress(f"{peer.name}: warming up")
        await warm_up(client, endpoint)
        prompts = PromptSequence()
        progress(f"{peer.name}: one stream x{repeats}")
        peer.single = await single_stream(client, endpoint, prompts, max_tokens, repeats)
        for streams in levels:
            progress(f"{peer.name}: {streams} concurrent streams")
            started = time.perf_counter()
            peer.levels.append(
                await concurrent_streams(client, endpoint, prompts, max_tokens, streams))
            progress(f"{peer.name}: {streams} streams took {time.perf_counter() - started:.1f}s")
        progress(f"{peer.name}: {turns}-turn chat")
        peer.chat = await growing_chat(client, endpoint, max_tokens, turns)
