"""The editor workloads of issue 15 (``./dev bench editor``), tiny, so that they cannot rot: every
workload against a real homeport serving the real Gemma 3 270M (and llama-server's setups too
when it has been built), then the table, JSON and chart; and their arithmetic on a synthetic
result."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from bench.completions import CompletionResult, _completion_line
from bench.editor_cli import run_editor
from bench.editor_prompts import copied_chars, edit_task, shared_prompt_messages
from bench.editor_report import print_report
from bench.editor_results import (
    CHAT,
    EDIT,
    HOMEPORT,
    HOMEPORT_FLASH,
    HOMEPORT_NO_SPECULATION,
    LLAMA_SERVER,
    NGRAM_MOD,
    NGRAM_SIMPLE,
    RETURNING,
    SHARED,
    WORKLOADS,
    EditorReport,
    PeerEntry,
    Sample,
    Workload,
    goals,
    returning_ttft_p50,
    ttft_p95,
)
from bench.editor_run import EditorOptions
from bench.llamacpp_build import cached_tools, installed_version
from bench.peers import Settings
from homeport.engine.llama import default_threads
from tests.support.models import gemma_gguf

# Smaller still than --quick: only the parts, not the figures, are tested here.
TINY = EditorOptions(rounds=1, edit_tokens=24, shared_clients=4, shared_tokens=4,
                     attached_chars=200, conversations=5, turns=2, conversation_chars=300,
                     answer_tokens=4, chat_tokens=8, levels=(1, 2))


@pytest.mark.timeout(1200)  # up to 13 servers started in turn on a busy machine
def test_every_workload_runs_tiny(tmp_path: Path) -> None:
    import platformdirs

    tools = cached_tools(platformdirs.user_cache_path("homeport-bench"), installed_version())
    settings = Settings(gemma_gguf(), default_threads(), ctx_per_slot=2048)
    output = io.StringIO()
    report = run_editor(list(WORKLOADS), TINY, settings, tools, tmp_path, "the smoke test",
                        Console(file=output, width=200, color_system=None))
    assert [workload.name for workload in report.workloads] == list(WORKLOADS)
    for workload in report.workloads:
        homeport = workload.peer(HOMEPORT)
        assert homeport is not None
        assert homeport.error is None, homeport.error
        assert homeport.errors() == []
        for peer in workload.peers:
            assert peer.error is None, (workload.name, peer.name, peer.error)
    edit = report.workloads[0].peer(HOMEPORT)
    assert edit is not None
    assert len(edit.samples) == TINY.rounds
    sample = edit.samples[0]
    assert sample.completed
    assert 0 < sample.tokens <= TINY.edit_tokens
    assert sample.text
    assert sample.copied_chars is not None
    assert sample.copied_chars > len(sample.text) // 2  # Gemma copies the region
    shared = report.workloads[1].peer(HOMEPORT)
    assert shared is not None
    assert len(shared.samples) == TINY.shared_clients
    assert ttft_p95(shared) is not None
    returning = report.workloads[2].peer(HOMEPORT)
    assert returning is not None
    assert len(returning.samples) == TINY.conversations * TINY.turns
    assert sum(s.returning for s in returning.samples) == TINY.conversations
    assert returning_ttft_p50(returning) is not None
    chat = report.workloads[3].peer(HOMEPORT)
    assert chat is not None
    assert [level.streams for level in chat.levels] == list(TINY.levels)
    assert all(level.completed == level.total for level in chat.levels)

    data = json.loads((tmp_path / "bench.json").read_text())
    assert [workload["name"] for workload in data["workloads"]] == list(WORKLOADS)
    assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")
    print_report(report, Console(file=output, width=200, color_system=None))
    assert "Goals (issue 15)" in output.getvalue()


def test_the_edit_prompt_is_a_region_a_request_and_its_first_line() -> None:
    task = edit_task()
    lines = task.region.splitlines()
    assert 60 <= len(lines) <= 120
    assert task.prompt.startswith(task.region)
    assert task.prompt.endswith(lines[0] + "\n")
    assert task.old_line != task.new_line
    assert task.old_line in task.region
    assert task.new_line in task.expected
    assert copied_chars(task.region, task.expected) > 0.9 * len(task.expected)
    assert copied_chars(task.region, "nothing like the region at all") == 0


def test_the_shared_prompt_differs_only_in_the_question() -> None:
    starts = shared_prompt_messages(4)
    assert len({start[0]["content"] for start in starts}) == 1
    assert len({start[1]["content"] for start in starts}) == 4
    assert "CodeCompanion" in starts[0][0]["content"]


def test_llama_servers_last_completion_event_gives_counts_and_drafts() -> None:
    result = CompletionResult(started=0.0)
    assert not _completion_line('data: {"content": "def", "stop": false}', result)
    done = _completion_line(
        'data: {"content": "", "stop": true, "stop_type": "limit", "tokens_predicted": 600, '
        '"timings": {"prompt_n": 12, "cache_n": 700, "draft_n": 400, "draft_n_accepted": 380}}',
        result)
    assert done
    assert (result.text, result.tokens, result.finish_reason) == ("def", 600, "limit")
    assert (result.drafted, result.accepted, result.prompt_evaluated) == (400, 380, 12)


def _sample(ttft: float, tps: float = 100.0, round_: int = 0, returning: bool = False,
            text: str = "same") -> Sample:
    return Sample(round_, ttft, tps, 600, True, returning=returning, text=text, copied_chars=4)


def test_goals_are_ratios_against_llama_server() -> None:
    report = EditorReport("./dev bench editor", {}, {}, "2026-01-01T00:00:00+00:00")
    report.workloads = [
        Workload(EDIT, [PeerEntry(LLAMA_SERVER, "", [], [_sample(0.1, 80.0)]),
                        PeerEntry(NGRAM_SIMPLE, "", [], [_sample(0.1, 120.0)]),
                        PeerEntry(NGRAM_MOD, "", [], [_sample(0.1, 150.0)]),
                        PeerEntry(HOMEPORT, "", [], [_sample(0.1, 200.0)]),
                        PeerEntry(HOMEPORT_FLASH, "", [], [_sample(0.1, 60.0)]),
                        PeerEntry(HOMEPORT_NO_SPECULATION, "", [], [_sample(0.1, 90.0)])]),
        Workload(SHARED, [PeerEntry(LLAMA_SERVER, "", [], [_sample(t) for t in (1, 2, 3, 4)]),
                          PeerEntry(HOMEPORT, "", [], [_sample(t / 4) for t in (1, 2, 3, 4)])]),
        Workload(RETURNING, [PeerEntry(HOMEPORT, "", [], [_sample(2.0), _sample(0.5, returning=True)])]),
        Workload(CHAT, []),
    ]
    found = {goal.name: goal for goal in goals(report)}
    default = found["decode tokens/s vs llama-server default"]
    assert default.value == pytest.approx(2.5)
    assert default.passed
    best = found["decode tokens/s vs llama-server's best --spec-type"]
    assert best.value == pytest.approx(200 / 150)
    assert best.passed
    assert not [name for name in found if "flash attention" in name]  # the default's goals only
    assert found["output identical with speculation on and off"].passed
    shared = found["p95 time to first token vs llama-server -np 4"]
    assert shared.value == pytest.approx(0.25)
    assert shared.passed
    assert found["p50 returning time to first token vs llama-server --cache-ram 0"].passed is None
    output = io.StringIO()
    print_report(report, Console(file=output, width=220, color_system=None))
    assert "2.50x" in output.getvalue()
    assert "MISSED" not in output.getvalue()
