"""Running the editor workloads (issue 15): which peers each workload starts, and the rounds.

Every workload starts its own peers (homeport and llama-server in its default setup and in its
best setup for that workload), all serving the same GGUF with the same settings, and sends each
round to every peer in turn, in a rotated order, so that outside load falls on them alike. The
shared prompt wants a freshly loaded model every round, so its peers are started for each round.
Every loop is bounded in count and every stream in time (``bench.streams.STREAM_LIMIT``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from bench import editor_workloads
from bench.completions import stream_completion
from bench.editor_prompts import conversation_opening, edit_task, shared_prompt_messages
from bench.editor_results import (
    CACHE_RAM,
    CHAT,
    EDIT,
    HOMEPORT,
    HOMEPORT_FLASH,
    HOMEPORT_NO_SPECULATION,
    LLAMA_SERVER,
    NGRAM_MOD,
    NGRAM_SIMPLE,
    NO_CACHE_RAM,
    RETURNING,
    SHARED,
    PeerEntry,
    Workload,
)
from bench.llamacpp_build import LlamaTools
from bench.peers import PeerError, PeerSpec, Settings, homeport_spec, llama_server_spec, running
from bench.prompts import Message, PromptSequence
from bench.results import ConcurrencyLevel, Round
from bench.streams import Endpoint, Protocol, StreamResult, stream_chat
from bench.workloads import WARMUP_MESSAGES, WARMUP_TOKENS, concurrent_streams
from homeport.store.bundled import GEMMA_NAME

Progress = Callable[[str], None]
T = TypeVar("T")
CACHE_RAM_MIB = 8192  # llama-server's default --cache-ram, named so the setup is explicit


@dataclass(frozen=True)
class EditorOptions:
    """How big each workload is (``--quick`` makes every one tiny)."""

    rounds: int = 3
    edit_tokens: int = 600
    edit_lines: int = 70
    shared_clients: int = 4
    shared_tokens: int = 32
    attached_chars: int = 3600
    conversations: int = 8
    turns: int = 3
    conversation_chars: int = 3400
    answer_tokens: int = 32
    chat_tokens: int = 128
    levels: tuple[int, ...] = (1, 4)


# homeport's default speculates where it is exact (the step-invariant kernels: README);
# beside it, its setup for speed alone, and for the edit the default without speculation, whose
# text must be the same.
FLASH = {"HOMEPORT_FLASH_ATTENTION": "true"}
NO_SPECULATION = {"HOMEPORT_SPECULATION": "off"}


def peer_specs(workload: str, settings: Settings, tools: LlamaTools | None, work: Path
               ) -> list[PeerSpec]:
    """homeport and llama-server's setups for ``workload``; llama-server first (the baseline).
    Without ``tools`` (llama-server not built), homeport alone: the workload still runs."""
    gemma = {"HOMEPORT_BUNDLED_MODELS": GEMMA_NAME}
    protocol: Protocol = "ollama" if workload == EDIT else "openai"  # /api/generate raw for edits

    def homeport(name: str, extra: dict[str, str] | None = None) -> PeerSpec:
        return homeport_spec(settings, work / f"{workload}-{name}".replace(" ", "-"), name,
                             protocol=protocol, model=GEMMA_NAME, extra_env={**gemma, **(extra or {})})

    def server(name: str, *args: str) -> PeerSpec:
        assert tools is not None
        spec = llama_server_spec(settings, tools, name=name, extra_args=args)
        # No ignore_eos here: both servers stop where the model does, so they write the same tokens.
        return dataclasses.replace(spec, endpoint=dataclasses.replace(spec.endpoint, extra_body={}))

    if tools is None:
        specs = []
    elif workload == EDIT:
        specs = [server(LLAMA_SERVER), server(NGRAM_SIMPLE, "--spec-type", "ngram-simple"),
                 server(NGRAM_MOD, "--spec-type", "ngram-mod")]
    elif workload == RETURNING:
        specs = [server(NO_CACHE_RAM, "--cache-ram", "0"),
                 server(CACHE_RAM, "--cache-ram", str(CACHE_RAM_MIB))]
    else:
        specs = [server(LLAMA_SERVER)]
    specs.append(homeport(HOMEPORT))
    specs.append(homeport(HOMEPORT_FLASH, FLASH))
    if workload == EDIT:
        specs.append(homeport(HOMEPORT_NO_SPECULATION, NO_SPECULATION))
    return specs


@dataclass
class Live:
    entry: PeerEntry
    endpoint: Endpoint


def rotated(items: list[T], turn: int) -> list[T]:
    """Another order each round, so that no peer always runs right after another."""
    shift = turn % len(items) if items else 0
    return items[shift:] + items[:shift]


def _ask(step: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """``step(client, *args)`` run to the end with a fresh client."""
    async def go() -> T:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=32)) as client:
            return await step(client, *args)
    return asyncio.run(go())


def _warm_up(live: Live, workload: str) -> None:
    """One short request, so that loading the model (homeport loads on demand) is not measured."""
    result: StreamResult
    if workload == EDIT:
        result = _ask(stream_completion, live.endpoint, "Hello", WARMUP_TOKENS)
    else:
        result = _ask(stream_chat, live.endpoint, WARMUP_MESSAGES, WARMUP_TOKENS)
    if result.error:
        live.entry.error = f"warm-up request failed: {result.error}"


@contextmanager
def _started(specs: list[PeerSpec], entries: dict[str, PeerEntry], run_dir: Path,
             workload: str, progress: Progress) -> Iterator[list[Live]]:
    """Every peer of ``specs`` started and warmed up; all stopped on the way out."""
    with ExitStack() as stack:
        live = []
        for spec in specs:
            entry = entries[spec.name]
            progress(f"{workload}: starting {spec.name}")
            log = run_dir / f"{workload}-{spec.name}.log".replace(" ", "-")
            try:
                endpoint = stack.enter_context(running(spec, log))
            except PeerError as exc:
                entry.error = str(exc)
                continue
            one = Live(entry, endpoint)
            _warm_up(one, workload)
            if entry.error is None:
                live.append(one)
        yield live


def run_workload(workload: str, specs: list[PeerSpec], options: EditorOptions, run_dir: Path,
                 progress: Progress) -> Workload:
    entries = {spec.name: PeerEntry(spec.name, spec.description, spec.command) for spec in specs}
    result = Workload(workload, list(entries.values()), _settings(workload, options))
    if workload == SHARED:
        _shared(specs, entries, options, run_dir, progress)
        return result
    with _started(specs, entries, run_dir, workload, progress) as live:
        if workload == EDIT:
            _edit(live, options, progress)
        elif workload == RETURNING:
            _returning(live, options, progress)
        elif workload == CHAT:
            _chat(live, options, progress)
    return result


def _settings(workload: str, options: EditorOptions) -> dict[str, Any]:
    if workload == EDIT:
        task = edit_task(lines=options.edit_lines)
        return {"rounds": options.rounds, "max_tokens": options.edit_tokens,
                "region": task.source, "region_chars": len(task.region),
                "change": [task.old_line.strip(), task.new_line.strip()]}
    if workload == SHARED:
        return {"rounds": options.rounds, "clients": options.shared_clients,
                "max_tokens": options.shared_tokens, "attached_chars": options.attached_chars}
    if workload == RETURNING:
        return {"conversations": options.conversations, "turns": options.turns,
                "conversation_chars": options.conversation_chars,
                "max_tokens": options.answer_tokens}
    return {"rounds": options.rounds, "levels": list(options.levels),
            "max_tokens": options.chat_tokens}


def _edit(live: list[Live], options: EditorOptions, progress: Progress) -> None:
    task = edit_task(lines=options.edit_lines)
    for round_ in range(options.rounds):
        for peer in rotated(live, round_):
            progress(f"edit: {peer.entry.name}, round {round_ + 1}/{options.rounds}")
            peer.entry.samples.append(_ask(editor_workloads.edit, peer.endpoint, task,
                                           options.edit_tokens, round_))


def _shared(specs: list[PeerSpec], entries: dict[str, PeerEntry], options: EditorOptions,
            run_dir: Path, progress: Progress) -> None:
    starts = shared_prompt_messages(options.shared_clients, options.attached_chars)
    for round_ in range(options.rounds):
        for spec in rotated(specs, round_):
            with _started([spec], entries, run_dir, SHARED, progress) as live:
                for peer in live:
                    progress(f"shared prompt: {spec.name}, round {round_ + 1}/{options.rounds}")
                    peer.entry.samples.extend(_ask(editor_workloads.shared_prompt,
                                                   peer.endpoint, starts,
                                                   options.shared_tokens, round_))


def _returning(live: list[Live], options: EditorOptions, progress: Progress) -> None:
    histories: dict[str, list[list[Message]]] = {
        peer.entry.name: [conversation_opening(i, options.conversation_chars)
                          for i in range(options.conversations)] for peer in live}
    for turn in range(options.turns):
        for peer in rotated(live, turn):
            progress(f"returning conversations: {peer.entry.name}, turn {turn + 1}/{options.turns}")
            peer.entry.samples.extend(_ask(editor_workloads.conversation_turn, peer.endpoint,
                                           histories[peer.entry.name], turn,
                                           options.answer_tokens))


def _chat(live: list[Live], options: EditorOptions, progress: Progress) -> None:
    prompts = {peer.entry.name: PromptSequence() for peer in live}
    for streams in options.levels:
        rounds: dict[str, list[Round]] = {peer.entry.name: [] for peer in live}
        for round_ in range(options.rounds):
            for peer in rotated(live, round_):
                progress(f"plain chat: {peer.entry.name}, {streams} stream(s), "
                         f"round {round_ + 1}/{options.rounds}")
                rounds[peer.entry.name].append(_ask(concurrent_streams, peer.endpoint,
                                                    prompts[peer.entry.name],
                                                    options.chat_tokens, streams))
        for peer in live:
            peer.entry.levels.append(ConcurrencyLevel(streams, rounds[peer.entry.name]))
