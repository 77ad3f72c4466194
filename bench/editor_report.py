"""Showing an ``EditorReport``: one rich table per workload, the goals, and a four-panel chart."""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from bench.editor_results import (
    CACHE_RAM,
    CHAT,
    EDIT,
    HOMEPORT,
    LLAMA_SERVER,
    NO_CACHE_RAM,
    RETURNING,
    SHARED,
    EditorReport,
    PeerEntry,
    Workload,
    acceptance,
    copied,
    decode_tps,
    goals,
    returning_ttft_p50,
    same_output,
    ttft_p95,
)
from bench.report import _ms, _num, _times, finish_plot, passed_mark, print_heading, save_chart
from bench.results import ratio


def edit_table(workload: Workload) -> Table:
    table = Table(title=f"edit: {workload.settings.get('region')} copied with one change, "
                        f"raw completion, greedy, up to {workload.settings.get('max_tokens')} "
                        "tokens (median of rounds)")
    for column in ("", "decode t/s", f"vs {LLAMA_SERVER}", "TTFT ms", "tokens",
                   "copied / output chars", "drafts accepted", "same text as homeport"):
        table.add_column(column, justify="left" if not column else "right")
    base, mine = workload.peer(LLAMA_SERVER), workload.peer(HOMEPORT)
    for peer in workload.peers:
        if peer.error:
            table.add_row(peer.name, "-", "-", "-", "-", "-", "-", peer.error[:60])
            continue
        chars = copied(peer)
        accepted = acceptance(peer)
        same = same_output(peer, mine) if mine and peer is not mine else None
        tokens = ",".join(sorted({str(s.tokens) for s in peer.samples}))
        table.add_row(peer.name, _num(decode_tps(peer)),
                      _times(ratio(decode_tps(peer), decode_tps(base) if base else None)),
                      _ms(_median_ttft(peer)), tokens,
                      f"{chars[0]:,} / {chars[1]:,}" if chars else "-",
                      "-" if accepted is None else f"{accepted:.0%}",
                      "-" if same is None else ("yes" if same else "[red]no[/]"))
    return table


def _median_ttft(peer: PeerEntry) -> float | None:
    times = sorted(s.ttft_s for s in peer.samples if s.ttft_s is not None)
    return times[len(times) // 2] if times else None


def shared_table(workload: Workload) -> Table:
    table = Table(title=f"shared prompt: {workload.settings.get('clients')} clients at once, "
                        "CodeCompanion's system prompt + an attached file, freshly loaded model "
                        "(p95 per round, median of rounds)")
    for column in ("", "TTFT p95 ms", f"vs {LLAMA_SERVER}", "prompt tokens", "completed"):
        table.add_column(column, justify="left" if not column else "right")
    base = workload.peer(LLAMA_SERVER)
    for peer in workload.peers:
        prompts = ",".join(sorted({str(s.prompt_tokens) for s in peer.samples
                                   if s.prompt_tokens is not None})) or "?"
        done = sum(s.completed for s in peer.samples)
        table.add_row(peer.name, _ms(ttft_p95(peer)),
                      _times(ratio(ttft_p95(peer), ttft_p95(base) if base else None)), prompts,
                      f"{done}/{len(peer.samples)}" if not peer.error else peer.error[:60])
    return table


def returning_table(workload: Workload) -> Table:
    table = Table(title=f"returning conversations: {workload.settings.get('conversations')} "
                        f"conversations taking turns on 4 slots, {workload.settings.get('turns')} "
                        "turns each")
    for column in ("", "first turns TTFT p50 ms", "returning TTFT p50 ms",
                   f"vs {NO_CACHE_RAM}", f"vs {CACHE_RAM}", "returning: prompt / evaluated"):
        table.add_column(column, justify="left" if not column else "right")
    without, with_cache = workload.peer(NO_CACHE_RAM), workload.peer(CACHE_RAM)
    for peer in workload.peers:
        if peer.error:
            table.add_row(peer.name, "-", "-", "-", "-", peer.error[:60])
            continue
        first = sorted(s.ttft_s for s in peer.samples if not s.returning and s.ttft_s is not None)
        back = [s for s in peer.samples if s.returning]
        prompt = sum(s.prompt_tokens or 0 for s in back)
        evaluated = [s.prompt_evaluated for s in back]
        value = returning_ttft_p50(peer)
        table.add_row(peer.name, _ms(first[len(first) // 2] if first else None), _ms(value),
                      _times(ratio(value, returning_ttft_p50(without) if without else None)),
                      _times(ratio(value, returning_ttft_p50(with_cache) if with_cache else None)),
                      f"{prompt:,} / " + ("?" if None in evaluated else
                                          f"{sum(e or 0 for e in evaluated):,}"))
    return table


def chat_table(workload: Workload) -> Table:
    table = Table(title="plain chat: concurrent streams, each a different prompt "
                        f"({workload.settings.get('max_tokens')} tokens, median of rounds)")
    for column in ("", "streams", "aggregate t/s", f"vs {LLAMA_SERVER}", "completed"):
        table.add_column(column, justify="left" if not column else "right")
    base = workload.peer(LLAMA_SERVER)
    for peer in workload.peers:
        for level in peer.levels:
            theirs = base.level(level.streams) if base else None
            table.add_row(peer.name, str(level.streams), _num(level.aggregate_tps),
                          _times(ratio(level.aggregate_tps,
                                       theirs.aggregate_tps if theirs else None)),
                          f"{level.completed}/{level.total}")
        if peer.error:
            table.add_row(peer.name, "-", "-", "-", peer.error[:60])
    return table


def goals_table(report: EditorReport) -> Table:
    table = Table(title="Goals (issue 15): homeport against llama-server from this run")
    for column in ("workload", "goal", "target", "measured", ""):
        table.add_column(column, justify="left" if column in ("workload", "goal") else "right")
    for goal in goals(report):
        value = ("-" if goal.value is None else "yes" if goal.value == 1.0 else "no") \
            if goal.goal.startswith("=") else _times(goal.value)
        table.add_row(goal.workload, goal.name, goal.goal, value, passed_mark(goal.passed))
    return table


TABLES = {EDIT: edit_table, SHARED: shared_table, RETURNING: returning_table, CHAT: chat_table}


def print_report(report: EditorReport, console: Console) -> None:
    print_heading(report, console)
    for workload in report.workloads:
        console.print(TABLES[workload.name](workload))
    console.print(goals_table(report))
    for workload in report.workloads:
        for peer in workload.peers:
            if peer.error:
                console.print(f"[red]{workload.name}, {peer.name} failed:[/] {peer.error}")
            for error in peer.errors()[:3]:
                console.print(f"[red]{workload.name}, {peer.name}, a request:[/] {error}")
    for error in report.errors:
        console.print(f"[red]{error}[/]")


def _bars(axis: Axes, names: list[str], values: list[float | None], title: str,
          unit: str) -> None:
    shown = [(name, value) for name, value in zip(names, values, strict=True) if value is not None]
    axis.barh([name for name, _ in shown], [value for _, value in shown],
              color=["C0" if name == HOMEPORT else "C1" for name, _ in shown])
    axis.invert_yaxis()
    axis.set_title(title, fontsize=10)
    for index, (_, value) in enumerate(shown):
        axis.text(value, index, f" {value:.0f} {unit}", va="center", fontsize=8)
    axis.grid(alpha=0.3, axis="x")


def write_chart(report: EditorReport, path: Path) -> None:
    """Four panels: edit decode tokens/s, shared-prompt p95 TTFT, returning p50 TTFT, and
    plain chat aggregate tokens/s per stream count."""
    figure = Figure(figsize=(13, 8))
    axes = figure.subplots(2, 2)
    panels = {EDIT: axes[0][0], SHARED: axes[0][1], RETURNING: axes[1][0], CHAT: axes[1][1]}
    for workload in report.workloads:
        axis = panels[workload.name]
        names = [peer.name for peer in workload.peers]
        if workload.name == EDIT:
            _bars(axis, names, [decode_tps(p) for p in workload.peers],
                  "edit: decode tokens/s (higher is better)", "t/s")
        elif workload.name == SHARED:
            _bars(axis, names, [_scaled(ttft_p95(p)) for p in workload.peers],
                  "shared prompt: p95 time to first token, ms (lower is better)", "ms")
        elif workload.name == RETURNING:
            _bars(axis, names, [_scaled(returning_ttft_p50(p)) for p in workload.peers],
                  "returning conversations: p50 TTFT of returning turns, ms (lower is better)",
                  "ms")
        else:
            for peer in workload.peers:
                axis.plot([level.streams for level in peer.levels],
                          [level.aggregate_tps for level in peer.levels], marker="o",
                          label=peer.name, color="C0" if peer.name == HOMEPORT else "C1")
            axis.set_title("plain chat: aggregate tokens/s (higher is better)", fontsize=10)
            axis.set_xlabel("streams")
            axis.set_xticks(sorted({level.streams for peer in workload.peers
                                    for level in peer.levels}))
            finish_plot(axis)
    for name, axis in panels.items():
        if report.workload(name) is None:
            axis.set_axis_off()
    save_chart(figure, "homeport editor workloads (issue 15)", report, path)


def _scaled(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000
