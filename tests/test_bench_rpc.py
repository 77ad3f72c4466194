"""bench/rpc.py, run for real but short: two loopback workers, one round of a few tokens. It checks
the benchmark's own parts (workers started and stopped, the split plan, both sides measured, the
JSON written), not any speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.server import PROJECT_SRC

REPO = PROJECT_SRC.parent


def test_rpc_bench_measures_both_sides_and_writes_its_result(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("HOMEPORT_", "OLLAMA_"))}
    env["PYTHONPATH"] = f"{PROJECT_SRC}{os.pathsep}{REPO}"
    result = subprocess.run(
        [sys.executable, "-m", "bench.rpc", "--rounds", "1", "--tokens", "8", "--workers", "2",
         "--num-gpu", "20", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "placement of the bundled model here:" in result.stdout
    assert "rpc side: 20/31 layers on workers: RPC0 on 127.0.0.1:" in result.stdout
    written = list(tmp_path.glob("rpc-*.json"))
    assert len(written) == 1
    report = json.loads(written[0].read_text())
    results = report["results"]
    for side in ("local", "rpc"):
        assert len(results[side]["load_s"]) == 1
        assert results[side]["load_s"][0] > 0
        assert results[side]["tokens_per_s"][0] > 0
    machines = results["machines"]
    assert machines[0]["machine"] == "local"
    assert machines[0]["layers"] == 11
    assert [share["layers"] > 0 for share in machines[1:]] == [True, True]
    assert report["local_devices"]  # this machine's registry: at least its CPU
