"""The editor workloads' requests (issue 15), each turned into ``Sample``s.

- edit: one raw completion of a region copied with a one-line change; decode tokens/s after the
  first token, how much of the output repeats the region, the text itself (compared across peers);
- shared prompt: clients at once, the same system prompt and attached file, each its own question;
- returning conversations: more conversations than slots, taking turns, each turn resending the
  whole conversation with the answers the server gave.
"""

from __future__ import annotations

import asyncio

import httpx

from bench.completions import stream_completion
from bench.editor_prompts import EditTask, copied_chars, follow_up
from bench.editor_results import Sample
from bench.prompts import Message
from bench.streams import Endpoint, StreamResult, stream_chat


def sample_of(result: StreamResult, round_: int, returning: bool = False) -> Sample:
    return Sample(round_, result.ttft, result.decode_rate, result.tokens, result.completed,
                  result.error, result.prompt_tokens, result.prompt_evaluated, returning)


async def edit(client: httpx.AsyncClient, endpoint: Endpoint, task: EditTask, max_tokens: int,
               round_: int) -> Sample:
    result = await stream_completion(client, endpoint, task.prompt, max_tokens)
    base = sample_of(result, round_)
    return Sample(**{**base.__dict__, "text": result.text,
                     "copied_chars": copied_chars(task.region, result.text),
                     "drafted": result.drafted, "accepted": result.accepted})


async def shared_prompt(client: httpx.AsyncClient, endpoint: Endpoint,
                        starts: list[list[Message]], max_tokens: int, round_: int) -> list[Sample]:
    """Every client's request sent at once."""
    results = await asyncio.gather(
        *(stream_chat(client, endpoint, messages, max_tokens) for messages in starts))
    return [sample_of(result, round_) for result in results]


async def conversation_turn(client: httpx.AsyncClient, endpoint: Endpoint,
                            histories: list[list[Message]], turn: int,
                            max_tokens: int) -> list[Sample]:
    """Turn ``turn`` of every conversation, one after another: with more conversations than
    slots, each returns to a server whose slots others used since. Each history grows by the
    answer the server gave (and the next question); one whose turn failed is emptied and
    skipped from then on."""
    samples = []
    for history in histories:
        if not history:
            continue
        if turn > 0:
            history.append({"role": "user", "content": follow_up(turn)})
        result = await stream_chat(client, endpoint, history, max_tokens)
        samples.append(sample_of(result, turn, returning=turn > 0))
        if result.error:
            history.clear()
        else:
            history.append({"role": "assistant", "content": result.text})
    return samples
