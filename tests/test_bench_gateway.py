"""bench/gateway.py run tiny, so that it cannot rot: both sides stream, the gateway's figures are
written, and the gateway never mapped llama.cpp."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.server import isolated_env

REPO = Path(__file__).resolve().parents[1]


def test_gateway_bench_runs_both_sides_and_writes_its_figures(tmp_path: Path) -> None:
    env = isolated_env(tmp_path, {"PYTHONPATH": f"{REPO / 'src'}:{REPO}"})
    done = subprocess.run(
        [sys.executable, "-m", "bench.gateway", "--rounds", "1", "--tokens", "4", "--shows", "4",
         "--out", str(tmp_path / "results")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gateway/direct" in done.stdout
    (written,) = (tmp_path / "results").glob("gateway-*.json")
    report = json.loads(written.read_text())
    for side in ("direct", "gateway"):
        assert len(report["results"][side]["show_s"]) == 4
        for level in (1, 4):
            figures = report["results"][side][f"{level}_streams"]
            assert figures["tokens_per_s_median"] > 0
            assert len(figures["ttft_s"]) == level
    node = report["gateway"]
    assert node["start_s"] > 0
    assert 0 < node["rss_mib"] < node["upstream_rss_mib"]
    assert node["maps_llama_cpp"] is False
