"""bench/runners.py run tiny, so that it cannot rot: both sides load, stream and agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.server import isolated_env

REPO = Path(__file__).resolve().parents[1]


def test_runner_bench_runs_both_sides_and_writes_its_figures(tmp_path: Path) -> None:
    env = isolated_env(tmp_path, {"PYTHONPATH": f"{REPO / 'src'}:{REPO}"})
    done = subprocess.run(
        [sys.executable, "-m", "bench.runners", "--rounds", "1", "--tokens", "4",
         "--out", str(tmp_path / "results")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "runner/in" in done.stdout
    (written,) = (tmp_path / "results").glob("runners-*.json")
    results = json.loads(written.read_text())["results"]
    for side in ("in-process", "runner"):
        assert results[side]["load_s_median"] > 0
        for level in (1, 4):
            figures = results[side][f"{level}_streams"]
            assert figures["tokens_per_s_median"] > 0
            assert len(figures["ttft_s"]) == level
