"""The benchmark's own parts, fast: its stream client against the real server, and its table, JSON
and chart on a small synthetic result (no llama.cpp build, no peers)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from bench.prompts import PromptSequence
from bench.report import print_report, write_chart
from bench.results import (
    BenchReport,
    ChatRun,
    ConcurrencyLevel,
    NativeResult,
    PeerResult,
    Round,
    SingleStream,
    StreamSummary,
    percentile,
    targets,
    to_json,
)
from bench.streams import Endpoint, Protocol, StreamResult, stream_chat
from tests.conftest import MODEL


def _stream(base_url: str, protocol: Protocol, max_tokens: int, model: str = MODEL
            ) -> StreamResult:
    endpoint = Endpoint(base_url, protocol, model)

    async def go() -> StreamResult:
        async with httpx.AsyncClient() as client:
            return await stream_chat(client, endpoint, PromptSequence().take(1)[0], max_tokens)

    return asyncio.run(go())


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
def test_stream_client_times_a_real_stream(base_url: str, protocol: Protocol) -> None:
    result = _stream(base_url, protocol, max_tokens=12)
    assert result.error is None
    assert result.completed
    assert result.finish_reason == "length"
    assert result.usage_tokens == 12  # the server's own count
    assert 0 < result.pieces <= 12
    assert result.text.strip()
    assert result.ttft is not None
    assert 0 < result.ttft < result.ended - result.started
    assert result.decode_rate is not None
    assert result.decode_rate > 0


def test_stream_client_records_an_http_error_instead_of_raising(base_url: str) -> None:
    result = _stream(base_url, "openai", 4, model="no-such-model:latest")
    assert not result.completed
    assert result.error is not None
    assert result.error.startswith("HTTP 404")


def _run(ttft: float, completed: bool = True) -> StreamSummary:
    if not completed:  # cut before its first token, as llama-cpp-python's server does
        return StreamSummary(ttft_s=None, decode_tps=None, tokens=0, completed=False,
                             finish_reason=None)
    return StreamSummary(ttft_s=ttft, decode_tps=100.0, tokens=128, completed=True,
                         finish_reason="length")


def _peer(name: str, tps: float, wall: float, ttft: float, cut: int = 0) -> PeerResult:
    levels = [ConcurrencyLevel(n, [Round(wall * n / 4, [_run(ttft * (i + 1), completed=i >= cut)
                                                        for i in range(n)])]) for n in (1, 4, 8)]
    single = SingleStream([StreamSummary(ttft, tps, 128, True, "length") for _ in range(3)])
    chat = ChatRun([[_run(ttft * (1 + turn / 10) * spread) for turn in range(10)]
                    for spread in (1.0, 3.0, 1.1)])  # the median conversation is the 1.1x one
    return PeerResult(name, f"{name} for the test", [name], single, levels, chat)


def _report() -> BenchReport:
    report = BenchReport(command="./dev bench --quick", machine={"cpu_model": "Test CPU", "cores": 2},
                         settings={"max_tokens": 128}, started_at="2025-01-01T00:00:00+00:00")
    report.peers = [_peer("llama-server", 120.0, 4.0, 0.05), _peer("homeport", 118.0, 3.5, 0.05),
                    _peer("llama-cpp-python", 60.0, 9.0, 0.1, cut=3)]
    report.native = NativeResult(SingleStream([_run(0.04)]), 130.0, 1.0, {1: 150.0, 4: 200.0})
    return report


def test_percentile_interpolates() -> None:
    assert percentile([], 95) is None
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)


def test_targets_compare_against_llama_server_from_the_same_run() -> None:
    report = _report()
    checks = {check.name: check for check in targets(report, "homeport")}
    one = checks["one stream tokens/s vs llama-server"]
    assert one.value == pytest.approx(118 / 120)
    assert one.passed
    aggregate = checks["aggregate tokens/s at 4 vs llama-server"]
    assert aggregate.value == pytest.approx(4.0 / 3.5)
    assert aggregate.passed
    assert checks["p95 time to first token at 8 vs llama-server"].passed
    assert checks["streams cut"].value == 0
    assert checks["streams cut"].passed
    assert checks["turn-10 / turn-1 time to first token"].value == pytest.approx(1.9)
    assert checks["turn-10 / turn-1 time to first token"].passed is False
    chat = report.peers[1].chat
    assert chat is not None
    assert chat.ttft_s(0) == pytest.approx(0.05 * 1.1)  # the median of three conversations
    slow = {check.name: check for check in targets(report, "llama-cpp-python")}
    assert slow["streams cut"].value == 1 + 3 + 3
    assert slow["streams cut"].passed is False
    assert slow["one stream tokens/s vs llama-server"].passed is False
    # Streams that got no token leave no time to first token, and fail the target outright.
    assert slow["p95 time to first token at 4 vs llama-server"].value is None
    assert slow["p95 time to first token at 4 vs llama-server"].passed is False


def test_table_json_and_chart(tmp_path: Path) -> None:
    report = _report()
    output = io.StringIO()
    print_report(report, Console(file=output, width=200, color_system=None))
    text = output.getvalue()
    assert "./dev bench --quick" in text
    assert "Test CPU" in text
    assert "0.98x" in text  # homeport's one-stream ratio
    assert "MISSED" in text  # the chat target this synthetic homeport misses
    assert "5/8" in text  # llama-cpp-python's completed streams at 8

    data = json.loads(json.dumps(to_json(report)))
    homeport = data["peers"][1]
    assert homeport["single"]["decode_tps"] == pytest.approx(118.0)
    assert homeport["levels"][1]["aggregate_tps"] == pytest.approx(4 * 128 / 3.5)
    assert {target["name"] for target in homeport["targets"]} >= {"streams cut"}
    assert "targets" not in data["peers"][0]  # the baseline is not measured against itself

    chart = tmp_path / "bench.png"
    write_chart(report, chart)
    assert chart.read_bytes().startswith(b"\x89PNG")
    assert chart.stat().st_size > 10_000


def test_a_stream_that_failed_is_not_counted_as_cut() -> None:
    timed_out = StreamSummary(ttft_s=None, decode_tps=None, tokens=0, completed=False,
                              finish_reason=None, error="ReadTimeout")
    level = ConcurrencyLevel(2, [Round(1.0, [_run(0.05), timed_out])])
    assert (level.completed, level.cut, level.failed) == (1, 0, 1)
    report = _report()
    report.peers[1].levels.append(level)
    checks = {check.name: check for check in targets(report, "homeport")}
    assert checks["streams cut"].passed
    assert checks["streams failed (errors, timeouts)"].value == 1
    assert checks["streams failed (errors, timeouts)"].passed is False
    output = io.StringIO()
    print_report(report, Console(file=output, width=200, color_system=None))
    assert "1/2 (1 failed)" in output.getvalue()
    assert "homeport, a stream: ReadTimeout" in output.getvalue()
