"""The three workloads of issue 3, run over HTTP against every peer, interleaved.

1. one stream at a time (repeated): decode tokens/s and time to first token;
2. 1, 2, 4, 8 streams started together, each a different prompt, in as many rounds as workload 1
   has runs: aggregate tokens/s and p50/p95 time to first token (medians over the rounds),
   streams completed;
3. a 10-turn chat whose history grows: time to first token per turn.

All peers are up at once but only one is ever busy: each step (one run of workload 1, one round of
a level of workload 2, workload 3) goes to every peer in turn, in a rotated order each round,
before the next step starts, so that load from other processes on a shared machine falls on the
peers alike rather than on whichever ran during a busy minute. Every loop is bounded in count,
and every stream in time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from bench.prompts import Message, PromptSequence, chat_questions
from bench.results import (
    ChatRun,
    ConcurrencyLevel,
    PeerResult,
    Round,
    SingleStream,
    StreamSummary,
)
from bench.streams import Endpoint, StreamResult, stream_chat

WARMUP_TOKENS = 8
WARMUP_MESSAGES: list[Message] = [{"role": "user", "content": "Say hello."}]
Progress = Callable[[str], None]


@dataclass
class Contender:
    """A running peer, where its results go, and its own prompt sequence."""

    result: PeerResult
    endpoint: Endpoint
    prompts: PromptSequence = field(default_factory=PromptSequence)

    @property
    def failed(self) -> bool:
        return self.result.error is not None


async def warm_up(client: httpx.AsyncClient, endpoint: Endpoint) -> StreamResult:
    """One short request so that loading the model (homeport loads on demand) is not measured."""
    return await stream_chat(client, endpoint, WARMUP_MESSAGES, WARMUP_TOKENS)


async def concurrent_streams(client: httpx.AsyncClient, endpoint: Endpoint,
                             prompts: PromptSequence, max_tokens: int, streams: int) -> Round:
    batch = prompts.take(streams)
    results = await asyncio.gather(
        *(stream_chat(client, endpoint, messages, max_tokens) for messages in batch))
    wall = max(r.ended for r in results) - min(r.started for r in results)
    return Round(wall, [StreamSummary.of(r) for r in results])


def rotated(contenders: list[Contender], turn: int) -> list[Contender]:
    """The peers in another order each time, so that none always runs right after another."""
    shift = turn % len(contenders) if contenders else 0
    return contenders[shift:] + contenders[:shift]


async def growing_chat(client: httpx.AsyncClient, endpoint: Endpoint, max_tokens: int,
                       questions: list[str]) -> list[StreamSummary]:
    """Each turn resends the whole conversation so far, with the answers the server gave."""
    history: list[Message] = []
    summaries = []
    for question in questions:
        history.append({"role": "user", "content": question})
        result = await stream_chat(client, endpoint, history, max_tokens)
        summaries.append(StreamSummary.of(result))
        if result.error:
            break
        history.append({"role": "assistant", "content": result.text})
    return summaries


async def run_interleaved(contenders: list[Contender], *, max_tokens: int, repeats: int,
                          levels: list[int], turns: int, chat_rounds: int,
                          progress: Progress) -> None:
    """All three workloads, step by step across the peers, filling in each ``result``."""
    limits = httpx.Limits(max_connections=max(levels, default=1) + 4)
    async with httpx.AsyncClient(limits=limits) as client:
        for contender in contenders:
            progress(f"{contender.result.name}: warming up")
            warm = await warm_up(client, contender.endpoint)
            if warm.error:
                contender.result.error = f"warm-up request failed: {warm.error}"
        live = [contender for contender in contenders if not contender.failed]

        singles: dict[str, list[StreamSummary]] = {c.result.name: [] for c in live}
        for repeat in range(repeats):
            for contender in rotated(live, repeat):
                progress(f"{contender.result.name}: one stream, run {repeat + 1}/{repeats}")
                messages = contender.prompts.take(1)[0]
                run = await stream_chat(client, contender.endpoint, messages, max_tokens)
                singles[contender.result.name].append(StreamSummary.of(run))
        for contender in live:
            contender.result.single = SingleStream(singles[contender.result.name])

        for streams in levels:
            rounds: dict[str, list[Round]] = {c.result.name: [] for c in live}
            for repeat in range(repeats):
                for contender in rotated(live, repeat):
                    progress(f"{contender.result.name}: {streams} concurrent streams, "
                             f"round {repeat + 1}/{repeats}")
                    rounds[contender.result.name].append(await concurrent_streams(
                        client, contender.endpoint, contender.prompts, max_tokens, streams))
            for contender in live:
                contender.result.levels.append(
                    ConcurrencyLevel(streams, rounds[contender.result.name]))

        chats: dict[str, list[list[StreamSummary]]] = {c.result.name: [] for c in live}
        for conversation in range(chat_rounds):
            questions = chat_questions(conversation)[:turns]
            for contender in rotated(live, conversation):
                progress(f"{contender.result.name}: {turns}-turn chat "
                         f"{conversation + 1}/{chat_rounds}")
                chats[contender.result.name].append(await growing_chat(
                    client, contender.endpoint, max_tokens, questions))
        for contender in live:
            contender.result.chat = ChatRun(chats[contender.result.name])
