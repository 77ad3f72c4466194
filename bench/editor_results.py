"""The editor workloads' results (issue 15): every request as a ``Sample``, each workload's
headline figure per peer, and the goals checked as ratios against llama-server from the same run.

Pure arithmetic on recorded figures, so the tables, JSON and chart can be tested without servers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.results import (
    ConcurrencyLevel,
    RunRecord,
    at_least,
    at_most,
    median_known,
    percentile,
    ratio,
)

HOMEPORT = "homeport"
# homeport's default on this engine (step-invariant kernels, speculation on: README) against its
# setup for speed alone (llama.cpp's flash attention and kernels: answers may change with the
# batch, no speculation).
HOMEPORT_FLASH = "homeport flash attention on"
HOMEPORT_NO_SPECULATION = "homeport speculation off"
LLAMA_SERVER = "llama-server"  # the default setup of every workload
NGRAM_SIMPLE = "llama-server ngram-simple"
NGRAM_MOD = "llama-server ngram-mod"
NO_CACHE_RAM = "llama-server cache-ram 0"
CACHE_RAM = "llama-server cache-ram"

EDIT, SHARED, RETURNING, CHAT = "edit", "shared prompt", "returning conversations", "plain chat"
WORKLOADS = (EDIT, SHARED, RETURNING, CHAT)


@dataclass(frozen=True)
class Sample:
    """One request: what the client saw, and what the server said it did."""

    round: int
    ttft_s: float | None
    decode_tps: float | None
    tokens: int
    completed: bool
    error: str | None = None
    prompt_tokens: int | None = None
    prompt_evaluated: int | None = None  # prompt tokens evaluated, not taken from a cache
    returning: bool = False  # a later turn of a conversation (returning conversations)
    text: str | None = None  # the output (edit only: compared across peers)
    copied_chars: int | None = None  # output characters repeating the region (edit only)
    drafted: int | None = None  # llama-server's speculative decoding (edit only)
    accepted: int | None = None


@dataclass
class PeerEntry:
    name: str
    description: str
    command: list[str]
    samples: list[Sample] = field(default_factory=list)
    levels: list[ConcurrencyLevel] = field(default_factory=list)  # plain chat only
    error: str | None = None

    def level(self, streams: int) -> ConcurrencyLevel | None:
        return next((level for level in self.levels if level.streams == streams), None)

    def errors(self) -> list[str]:
        errors = [sample.error for sample in self.samples]
        errors += [run.error for level in self.levels for run in level.runs]
        return list(dict.fromkeys(error for error in errors if error))


@dataclass
class Workload:
    name: str
    peers: list[PeerEntry] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def peer(self, name: str) -> PeerEntry | None:
        return next((peer for peer in self.peers if peer.name == name), None)


@dataclass
class EditorReport(RunRecord):
    workloads: list[Workload] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def workload(self, name: str) -> Workload | None:
        return next((workload for workload in self.workloads if workload.name == name), None)


def decode_tps(peer: PeerEntry) -> float | None:
    """Edit: the median decode rate (tokens/s after the first token) over the rounds."""
    return median_known([sample.decode_tps for sample in peer.samples])


def ttft_p95(peer: PeerEntry) -> float | None:
    """Shared prompt: per round the p95 time to first token of the clients, then the median over
    rounds; None when a client got no token (leaving it out would flatter the server)."""
    rounds = sorted({sample.round for sample in peer.samples})
    per_round = []
    for number in rounds:
        times = [sample.ttft_s for sample in peer.samples if sample.round == number]
        if any(value is None for value in times):
            return None
        per_round.append(percentile([value for value in times if value is not None], 95))
    return median_known(per_round)


def returning_ttft_p50(peer: PeerEntry) -> float | None:
    """Returning conversations: the median time to first token of the returning turns."""
    times = [sample.ttft_s for sample in peer.samples if sample.returning]
    if not times or any(value is None for value in times):
        return None
    return percentile([value for value in times if value is not None], 50)


def copied(peer: PeerEntry) -> tuple[int, int] | None:
    """Edit: output characters copied from the region, and all output characters (first run)."""
    sample = next((s for s in peer.samples if s.text is not None), None)
    if sample is None or sample.text is None or sample.copied_chars is None:
        return None
    return sample.copied_chars, len(sample.text)


def same_output(peer: PeerEntry, other: PeerEntry) -> bool | None:
    """Edit: whether two peers wrote exactly the same text in every round (greedy)."""
    mine = [s.text for s in peer.samples if s.text is not None]
    theirs = [s.text for s in other.samples if s.text is not None]
    if not mine or not theirs:
        return None
    return set(mine) == set(theirs) and len(set(mine)) == 1


def acceptance(peer: PeerEntry) -> float | None:
    """Edit: the share of drafted tokens llama-server accepted, over all rounds."""
    drafted = sum(s.drafted or 0 for s in peer.samples)
    accepted = sum(s.accepted or 0 for s in peer.samples)
    return accepted / drafted if drafted else None


@dataclass(frozen=True)
class Goal:
    """One of issue 15's goals for homeport, measured against llama-server in the same run."""

    workload: str
    name: str
    value: float | None
    goal: str
    passed: bool | None  # None: not measured


def _best(workload: Workload, names: tuple[str, ...], figure: Any, *, lower: bool
          ) -> float | None:
    values = [figure(peer) for name in names if (peer := workload.peer(name)) is not None]
    present = [value for value in values if value is not None]
    if not present:
        return None
    return float(min(present) if lower else max(present))


def _homeport_setups(workload: Workload | None) -> list[tuple[PeerEntry, str]]:
    """homeport's default peer in ``workload``, with the words that tell its goals apart (none):
    the goals are the default setup's; the flash-attention-on peer is shown beside it."""
    if workload is None or (peer := workload.peer(HOMEPORT)) is None:
        return []
    return [(peer, "")]


def goals(report: EditorReport) -> list[Goal]:
    found: list[Goal] = []
    edit = report.workload(EDIT)
    for setup, which in _homeport_setups(edit):
        assert edit is not None
        default = edit.peer(LLAMA_SERVER)
        found.append(Goal(EDIT, f"decode tokens/s{which} vs llama-server default", *at_least(
            ratio(decode_tps(setup), decode_tps(default) if default else None), 2.0)))
        found.append(Goal(EDIT, f"decode tokens/s{which} vs llama-server's best --spec-type",
                          *at_least(ratio(decode_tps(setup), _best(
                              edit, (NGRAM_SIMPLE, NGRAM_MOD), decode_tps, lower=False)), 1.2)))
    if edit and (on := edit.peer(HOMEPORT)) and (off := edit.peer(HOMEPORT_NO_SPECULATION)):
        identical = same_output(on, off)
        found.append(Goal(EDIT, "output identical with speculation on and off",
                          None if identical is None else float(identical), "= 1 (same)",
                          identical))
    shared = report.workload(SHARED)
    for mine, which in _homeport_setups(shared):
        assert shared is not None
        base = shared.peer(LLAMA_SERVER)
        found.append(Goal(SHARED, f"p95 time to first token{which} vs llama-server -np 4",
                          *at_most(ratio(ttft_p95(mine), ttft_p95(base) if base else None), 0.4)))
    returning = report.workload(RETURNING)
    for mine, which in _homeport_setups(returning):
        assert returning is not None
        without, with_cache = returning.peer(NO_CACHE_RAM), returning.peer(CACHE_RAM)
        found.append(Goal(RETURNING,
                          f"p50 returning time to first token{which} vs llama-server --cache-ram 0",
                          *at_most(ratio(returning_ttft_p50(mine),
                                         returning_ttft_p50(without) if without else None), 0.5)))
        found.append(Goal(RETURNING,
                          f"p50 returning time to first token{which} vs llama-server --cache-ram",
                          *at_most(ratio(returning_ttft_p50(mine),
                                         returning_ttft_p50(with_cache) if with_cache else None),
                                   1.0)))
    chat = report.workload(CHAT)
    for setup, which in _homeport_setups(chat):
        assert chat is not None
        base = chat.peer(LLAMA_SERVER)
        for level in setup.levels:
            theirs = base.level(level.streams) if base else None
            found.append(Goal(CHAT, f"tokens/s at {level.streams} stream(s){which} vs llama-server",
                              *at_least(ratio(level.aggregate_tps,
                                              theirs.aggregate_tps if theirs else None), 1.0)))
    return found


def to_json(report: EditorReport) -> dict[str, Any]:
    data = asdict(report)
    figures = {EDIT: decode_tps, SHARED: ttft_p95, RETURNING: returning_ttft_p50}
    for workload, workload_data in zip(report.workloads, data["workloads"], strict=True):
        figure = figures.get(workload.name)
        for peer, peer_data in zip(workload.peers, workload_data["peers"], strict=True):
            if figure is not None:
                peer_data["headline"] = figure(peer)
            for level, level_data in zip(peer.levels, peer_data["levels"], strict=True):
                level_data["aggregate_tps"] = level.aggregate_tps
    data["goals"] = [asdict(goal) for goal in goals(report)]
    return data


def write_json(report: EditorReport, path: Path) -> None:
    path.write_text(json.dumps(to_json(report), indent=2) + "\n")
