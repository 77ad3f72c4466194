"""The benchmark's results as plain dataclasses: summaries of streams, ratios, targets, JSON.

Everything here is pure arithmetic on recorded figures, so the table, JSON and chart code can be
tested on a small synthetic result without any server.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.streams import StreamResult

BASELINE = "llama-server"


@dataclass(frozen=True)
class StreamSummary:
    """One stream as recorded in the JSON file."""

    ttft_s: float | None
    decode_tps: float | None
    tokens: int
    completed: bool
    finish_reason: str | None
    prompt_tokens: int | None = None
    prompt_evaluated: int | None = None
    pieces: int | None = None  # text pieces received: a client-side check on ``tokens``
    error: str | None = None

    @classmethod
    def of(cls, result: StreamResult) -> StreamSummary:
        return cls(result.ttft, result.decode_rate, result.tokens, result.completed,
                   result.finish_reason, result.prompt_tokens, result.prompt_evaluated,
                   result.pieces, result.error)


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation, None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median_known(values: list[float | None]) -> float | None:
    """The median of the values that were measured, None when none was."""
    present = [value for value in values if value is not None]
    return float(statistics.median(present)) if present else None


@dataclass(frozen=True)
class SingleStream:
    """Workload 1: one stream at a time, repeated; medians over the runs."""

    runs: list[StreamSummary]

    @property
    def decode_tps(self) -> float | None:
        return median_known([run.decode_tps for run in self.runs])

    @property
    def ttft_s(self) -> float | None:
        return median_known([run.ttft_s for run in self.runs])


@dataclass(frozen=True)
class Round:
    """``streams`` streams started together, once."""

    wall_s: float
    runs: list[StreamSummary]

    @property
    def aggregate_tps(self) -> float:
        return sum(run.tokens for run in self.runs) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def all_started(self) -> bool:
        """Every stream got at least one token (a cut stream may get none)."""
        return all(run.ttft_s is not None for run in self.runs)


@dataclass(frozen=True)
class ConcurrencyLevel:
    """Workload 2: ``streams`` streams started together, in one or more rounds; the figures are
    medians over the rounds, so one burst of outside load does not decide a ratio."""

    streams: int
    rounds: list[Round]

    @property
    def runs(self) -> list[StreamSummary]:
        return [run for round_ in self.rounds for run in round_.runs]

    @property
    def total(self) -> int:
        return len(self.runs)

    @property
    def aggregate_tps(self) -> float:
        return float(statistics.median(r.aggregate_tps for r in self.rounds)) if self.rounds else 0.0

    @property
    def completed(self) -> int:
        return sum(run.completed for run in self.runs)

    @property
    def cut(self) -> int:
        """Streams the server ended without a finish reason (and without an error)."""
        return sum(1 for run in self.runs if not run.completed and run.error is None)

    @property
    def failed(self) -> int:
        """Streams that ended in an error: an HTTP status, a broken connection, a timeout."""
        return sum(1 for run in self.runs if run.error is not None)

    @property
    def all_started(self) -> bool:
        return all(round_.all_started for round_ in self.rounds)

    def ttft_percentile(self, q: float) -> float | None:
        """The median over rounds of each round's percentile; None when a stream got no token:
        leaving it out would flatter the server."""
        if not self.rounds or not self.all_started:
            return None
        return median_known([percentile([run.ttft_s for run in round_.runs if run.ttft_s is not None], q)
                        for round_ in self.rounds])


@dataclass(frozen=True)
class ChatRun:
    """Workload 3: conversations whose history grows turn by turn, each on its own subject (so
    no first turn is a prompt seen before); per turn, the median over the conversations."""

    conversations: list[list[StreamSummary]]

    @property
    def turns(self) -> int:
        return max((len(turns) for turns in self.conversations), default=0)

    @property
    def runs(self) -> list[StreamSummary]:
        return [turn for turns in self.conversations for turn in turns]

    def ttft_s(self, turn: int) -> float | None:
        """The median time to first token of turn ``turn`` (from 0) over the conversations."""
        return median_known([turns[turn].ttft_s for turns in self.conversations if len(turns) > turn])

    @property
    def last(self) -> StreamSummary | None:
        """The last turn of the first conversation: its prompt size and what was evaluated."""
        return self.conversations[0][-1] if self.conversations and self.conversations[0] else None

    @property
    def growth(self) -> float | None:
        """Last turn's (median) time to first token over the first turn's."""
        if self.turns < 2:
            return None
        first, last = self.ttft_s(0), self.ttft_s(self.turns - 1)
        return last / first if first and last is not None else None


@dataclass
class PeerResult:
    name: str
    description: str
    command: list[str]
    single: SingleStream | None = None
    levels: list[ConcurrencyLevel] = field(default_factory=list)
    chat: ChatRun | None = None
    error: str | None = None
    request_extra: dict[str, Any] = field(default_factory=dict)  # e.g. ignore_eos

    def level(self, streams: int) -> ConcurrencyLevel | None:
        return next((level for level in self.levels if level.streams == streams), None)

    @property
    def streams_cut(self) -> int:
        return sum(level.cut for level in self.levels)

    @property
    def streams_failed(self) -> int:
        return sum(level.failed for level in self.levels)

    def errors(self) -> list[str]:
        """The distinct errors of every stream, in order of first appearance."""
        runs = [run for level in self.levels for run in level.runs]
        runs += self.single.runs if self.single else []
        runs += self.chat.runs if self.chat else []
        return list(dict.fromkeys(run.error for run in runs if run.error))


@dataclass(frozen=True)
class NativeResult:
    raw_engine: SingleStream | None = None
    llama_bench_tg: float | None = None
    llama_bench_stddev: float | None = None
    batched: dict[int, float] = field(default_factory=dict)  # sequences -> decode t/s
    errors: list[str] = field(default_factory=list)
    llama_cpp_commit: str | None = None  # the build llama-bench reports


@dataclass
class RunRecord:
    """How, where and when a bench run was made: the head of every bench's report."""

    command: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    started_at: str
    duration_s: float = 0.0


@dataclass
class BenchReport(RunRecord):
    peers: list[PeerResult] = field(default_factory=list)
    native: NativeResult = field(default_factory=NativeResult)
    errors: list[str] = field(default_factory=list)

    def peer(self, name: str) -> PeerResult | None:
        return next((peer for peer in self.peers if peer.name == name), None)


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or not baseline:
        return None
    return value / baseline


# A checked figure as goals and targets keep it: the value, the goal as text, and whether the
# value meets it (None: not measured).
Verdict = tuple[float | None, str, bool | None]


def at_least(value: float | None, goal: float) -> Verdict:
    return value, f">= {goal:.2f}x", None if value is None else value >= goal


def at_most(value: float | None, goal: float, failed: bool = False) -> Verdict:
    """``failed``: the measurement itself failed, which fails the goal whatever the value."""
    return value, f"<= {goal:.2f}x", False if failed else None if value is None else value <= goal


@dataclass(frozen=True)
class Target:
    """One of issue 3's targets, checked for one peer against llama-server from the same run."""

    name: str
    value: float | None
    goal: str
    passed: bool | None  # None: not measured


def targets(report: BenchReport, name: str) -> list[Target]:
    peer, base = report.peer(name), report.peer(BASELINE)
    if peer is None:
        return []
    checks: list[Target] = []
    single = peer.single.decode_tps if peer.single else None
    base_single = base.single.decode_tps if base and base.single else None
    checks.append(Target("one stream tokens/s vs llama-server",
                         *at_least(ratio(single, base_single), 0.95)))
    for streams in (4, 8):
        mine, theirs = peer.level(streams), base.level(streams) if base else None
        checks.append(Target(f"aggregate tokens/s at {streams} vs llama-server",
                             *at_least(ratio(mine.aggregate_tps if mine else None,
                                             theirs.aggregate_tps if theirs else None), 1.0)))
        checks.append(Target(f"p95 time to first token at {streams} vs llama-server",
                             *at_most(ratio(mine.ttft_percentile(95) if mine else None,
                                            theirs.ttft_percentile(95) if theirs else None), 1.0,
                                      failed=mine is not None and not mine.all_started)))
    for label, count in (("streams cut", peer.streams_cut),
                         ("streams failed (errors, timeouts)", peer.streams_failed)):
        value = float(count) if peer.levels else None
        checks.append(Target(label, value, "= 0", None if value is None else value == 0))
    turns = peer.chat.turns if peer.chat else report.settings.get("turns", 10)
    checks.append(Target(f"turn-{turns} / turn-1 time to first token",
                         *at_most(peer.chat.growth if peer.chat else None, 1.5)))
    return checks


def to_json(report: BenchReport) -> dict[str, Any]:
    """The whole report with the derived figures alongside the raw ones."""
    data = asdict(report)
    for peer, peer_data in zip(report.peers, data["peers"], strict=True):
        if peer.single:
            peer_data["single"].update(decode_tps=peer.single.decode_tps,
                                       ttft_s=peer.single.ttft_s)
        for level, level_data in zip(peer.levels, peer_data["levels"], strict=True):
            level_data.update(aggregate_tps=level.aggregate_tps, completed=level.completed,
                              cut=level.cut, failed=level.failed,
                              ttft_p50_s=level.ttft_percentile(50),
                              ttft_p95_s=level.ttft_percentile(95))
        if peer.chat:
            peer_data["chat"]["growth"] = peer.chat.growth
        if peer.name != BASELINE:
            peer_data["targets"] = [asdict(target) for target in targets(report, peer.name)]
    if report.native.raw_engine:
        data["native"]["raw_engine"].update(decode_tps=report.native.raw_engine.decode_tps,
                                            ttft_s=report.native.raw_engine.ttft_s)
    return data


def write_json(report: BenchReport, path: Path) -> None:
    path.write_text(json.dumps(to_json(report), indent=2) + "\n")
