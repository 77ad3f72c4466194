"""Showing a ``BenchReport``: rich tables on the terminal and a PNG chart (matplotlib)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from bench.results import BASELINE, BenchReport, ConcurrencyLevel, RunRecord, ratio, targets


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def _completed(level: ConcurrencyLevel, max_tokens: int | None) -> str:
    """``done/started``, then how many were cut, failed, or ended early at the end of text."""
    short = sum(1 for run in level.runs if run.completed and max_tokens and run.tokens < max_tokens)
    notes = [f"{count} {what}" for count, what in
             ((level.cut, "cut"), (level.failed, "failed"), (short, "short")) if count]
    return f"{level.completed}/{level.total}" + (f" ({', '.join(notes)})" if notes else "")


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def passed_mark(passed: bool | None) -> str:
    """A goal's or target's verdict, coloured; None: not measured."""
    return {True: "[green]ok[/]", False: "[red]MISSED[/]", None: "[dim]n/a[/]"}[passed]


def one_stream_table(report: BenchReport) -> Table:
    table = Table(title="1. One stream (median of runs)")
    for column in ("", "decode t/s", "TTFT ms", "tokens", f"vs {BASELINE}"):
        table.add_column(column, justify="left" if not column else "right")
    base = report.peer(BASELINE)
    base_tps = base.single.decode_tps if base and base.single else None
    for peer in report.peers:
        if peer.single is None:
            table.add_row(peer.name, "-", "-", "-", peer.error or "-")
            continue
        tokens = ",".join(sorted({str(run.tokens) for run in peer.single.runs}))
        table.add_row(peer.name, _num(peer.single.decode_tps), _ms(peer.single.ttft_s), tokens,
                      _times(ratio(peer.single.decode_tps, base_tps)))
    raw = report.native.raw_engine
    if raw is not None:
        table.add_row("raw engine (Llama, in-process)", _num(raw.decode_tps), _ms(raw.ttft_s),
                      ",".join(sorted({str(run.tokens) for run in raw.runs})),
                      _times(ratio(raw.decode_tps, base_tps)))
    if report.native.llama_bench_tg is not None:
        table.add_row(f"llama-bench tg{report.settings.get('max_tokens', '')}",
                      _num(report.native.llama_bench_tg), "-", "-",
                      _times(ratio(report.native.llama_bench_tg, base_tps)))
    return table


def concurrency_table(report: BenchReport) -> Table:
    table = Table(title="2. Concurrent streams (different prompts)")
    for column in ("", "streams", "aggregate t/s", f"vs {BASELINE}", "TTFT p50 ms",
                   "TTFT p95 ms", "p95 vs base", "completed"):
        table.add_column(column, justify="left" if not column else "right")
    base = report.peer(BASELINE)
    for peer in report.peers:
        for level in peer.levels:
            theirs = base.level(level.streams) if base else None
            table.add_row(
                peer.name, str(level.streams), _num(level.aggregate_tps),
                _times(ratio(level.aggregate_tps, theirs.aggregate_tps if theirs else None)),
                _ms(level.ttft_percentile(50)), _ms(level.ttft_percentile(95)),
                _times(ratio(level.ttft_percentile(95),
                             theirs.ttft_percentile(95) if theirs else None)),
                _completed(level, report.settings.get("max_tokens")),
                style="red" if level.completed < level.total else None)
        if peer.levels:
            table.add_section()
    for sequences, tps in sorted(report.native.batched.items()):
        table.add_row("llama-batched-bench (ceiling)", str(sequences), _num(tps), "", "", "", "",
                      "", style="dim")
    return table


def chat_table(report: BenchReport) -> Table:
    rounds = max((len(peer.chat.conversations) for peer in report.peers if peer.chat), default=0)
    table = Table(title="3. Growing chat: time to first token per turn (ms, median of "
                        f"{rounds} conversations)")
    turns = max((peer.chat.turns for peer in report.peers if peer.chat), default=0)
    table.add_column("")
    for turn in range(1, turns + 1):
        table.add_column(str(turn), justify="right")
    table.add_column("last/first", justify="right")
    table.add_column("last turn: prompt / evaluated tokens", justify="right")
    for peer in report.peers:
        if peer.chat is None:
            continue
        cells = [_ms(peer.chat.ttft_s(turn)) for turn in range(peer.chat.turns)]
        cells += [""] * (turns - len(cells))
        last = peer.chat.last
        table.add_row(peer.name, *cells, _times(peer.chat.growth),
                      f"{_count(last.prompt_tokens)} / {_count(last.prompt_evaluated)}"
                      if last else "-")
    return table


def targets_table(report: BenchReport) -> Table:
    names = [peer.name for peer in report.peers if peer.name.startswith("homeport")]
    table = Table(title=f"Targets (issue 3), ratios against {BASELINE} from this run")
    table.add_column("target")
    table.add_column("goal", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    checks = {name: targets(report, name) for name in names}
    for row, first in enumerate(checks[names[0]] if names else []):
        cells = []
        for name in names:
            check = checks[name][row]
            value = _num(check.value, 0) if check.goal == "= 0" else _times(check.value)
            cells.append(f"{value} {passed_mark(check.passed)}")
        table.add_row(first.name, first.goal, *cells)
    return table


def print_heading(report: RunRecord, console: Console, *details: str) -> None:
    """The command, the machine, any ``details`` lines, then the settings."""
    machine = report.machine
    console.print(f"[bold]command[/]  {report.command}")
    console.print(f"[bold]machine[/]  {machine.get('cpu_model')}, {machine.get('cores')} cores, "
                  f"{machine.get('memory_gib') or '?'} GiB, load average at start "
                  f"{machine.get('load_start') or '?'} / end {machine.get('load_end') or '?'}")
    for line in details:
        console.print(line)
    console.print(f"[bold]settings[/] {report.settings}")


def print_report(report: BenchReport, console: Console) -> None:
    machine = report.machine
    print_heading(report, console,
                  f"[bold]versions[/] homeport {machine.get('homeport')} ({machine.get('commit')}), "
                  f"llama-cpp-python {machine.get('llama_cpp_python')}, llama.cpp "
                  f"{report.native.llama_cpp_commit or '?'}")
    for table in (one_stream_table(report), concurrency_table(report), chat_table(report),
                  targets_table(report)):
        console.print(table)
    for peer in report.peers:
        if peer.error:
            console.print(f"[red]{peer.name} failed:[/] {peer.error}")
        for error in peer.errors()[:3]:
            console.print(f"[red]{peer.name}, a stream:[/] {error}")
    for error in report.native.errors + report.errors:
        console.print(f"[red]{error}[/]")


def write_chart(report: BenchReport, path: Path) -> None:
    """Four panels: one-stream speed, aggregate speed, p95 TTFT, and TTFT per chat turn."""
    # A bare Figure (no pyplot): no GUI backend, no global state.
    figure = Figure(figsize=(13, 9))
    axes = figure.subplots(2, 2)
    single, aggregate, p95, chat = axes[0][0], axes[0][1], axes[1][0], axes[1][1]
    colors = {peer.name: f"C{index}" for index, peer in enumerate(report.peers)}

    bars: list[tuple[str, float, str]] = [
        (peer.name, peer.single.decode_tps, colors[peer.name])
        for peer in report.peers if peer.single and peer.single.decode_tps]
    raw = report.native.raw_engine
    if raw and raw.decode_tps:
        bars.append(("raw engine", raw.decode_tps, "grey"))
    if report.native.llama_bench_tg:
        bars.append(("llama-bench tg", report.native.llama_bench_tg, "dimgrey"))
    single.barh([bar[0] for bar in bars], [bar[1] for bar in bars],
                color=[bar[2] for bar in bars])
    single.invert_yaxis()
    single.set_title("One stream: decode tokens/s")
    for index, (_, value, _) in enumerate(bars):
        single.text(value, index, f" {value:.0f}", va="center")

    levels: set[int] = set()
    for peer in report.peers:
        if not peer.levels:
            continue
        streams = [level.streams for level in peer.levels]
        levels.update(streams)
        aggregate.plot(streams, [level.aggregate_tps for level in peer.levels], marker="o",
                       label=peer.name, color=colors[peer.name])
        timed = [level for level in peer.levels if level.all_started]
        p95.plot([level.streams for level in timed],
                 [(level.ttft_percentile(95) or 0) * 1000 for level in timed],
                 marker="o", label=peer.name, color=colors[peer.name])
    if report.native.batched:
        sequences = sorted(report.native.batched)
        levels.update(sequences)
        aggregate.plot(sequences, [report.native.batched[n] for n in sequences], linestyle="--",
                       color="grey", label="llama-batched-bench (ceiling)")
    aggregate.set_title("Concurrent streams: aggregate tokens/s")
    p95.set_title("Concurrent streams: p95 time to first token (ms)\n"
                  "(no point where a stream got no token at all)", fontsize=10)
    for axis in (aggregate, p95):
        axis.set_xlabel("streams")
        axis.set_xticks(sorted(levels))

    for peer in report.peers:
        if peer.chat and peer.chat.turns:
            chat.plot(range(1, peer.chat.turns + 1),
                      [(peer.chat.ttft_s(turn) or 0) * 1000 for turn in range(peer.chat.turns)],
                      marker="o",
                      label=peer.name, color=colors[peer.name])
    chat.set_title("Growing chat: time to first token per turn (ms)")
    chat.set_xlabel("turn")
    turns = max((peer.chat.turns for peer in report.peers if peer.chat), default=0)
    chat.set_xticks(range(1, turns + 1))

    for axis in (aggregate, p95, chat):
        finish_plot(axis)
    save_chart(figure, "homeport benchmark", report, path)


def finish_plot(axis: Axes) -> None:
    """A line plot's y axis from zero, a legend where there are lines, a light grid."""
    axis.set_ylim(bottom=0)
    if axis.lines:
        axis.legend(fontsize="small")
    axis.grid(alpha=0.3)


def save_chart(figure: Figure, title: str, report: RunRecord, path: Path) -> None:
    """Title the chart with the machine and start time, note the command under it, and save it."""
    machine = report.machine
    figure.suptitle(f"{title} - {machine.get('cpu_model')}, {machine.get('cores')} cores, "
                    f"{report.started_at}", fontsize=11)
    figure.text(0.01, 0.005, report.command, fontsize=8, color="grey")
    figure.tight_layout(rect=(0, 0.02, 1, 0.97))
    figure.savefig(path, dpi=110)
