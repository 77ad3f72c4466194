"""OLLAMA_KV_CACHE_TYPE and OLLAMA_FLASH_ATTENTION, as Ollama reads them: a quantized K/V cache
really takes less memory in llama.cpp, answers still come, and bad combinations fall back to f16
with a warning."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL
from tests.support.server import ServerProcess, resident_bytes

MIB = 1024**2


def _serve_once(home: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """Start a server, load the model with one short answer: (its RSS, the answer, its log)."""
    with ServerProcess(home, env={"HOMEPORT_NUM_PARALLEL": "4",
                                  "HOMEPORT_CONTEXT_LENGTH": "4096", **env}) as server:
        reply = httpx.post(f"{server.url}/api/generate", timeout=120, json={
            "model": MODEL, "prompt": "Say hello.", "stream": False,
            "options": {"temperature": 0, "num_predict": 8}})
        assert reply.status_code == 200, reply.text
        assert server.process is not None
        return resident_bytes(server.process.pid), reply.json()["response"], server.log()


def test_a_quantized_cache_takes_less_memory(tmp_path: Path) -> None:
    rss = {}
    for kind in ("f16", "q8_0", "q4_0"):
        rss[kind], answer, log = _serve_once(tmp_path / kind, {"OLLAMA_KV_CACHE_TYPE": kind})
        assert answer.strip()
        assert f"{kind} K/V cache" in log
    # 16384 cells of SmolLM2's cache: 360 MiB in f16, about half in q8_0, a quarter in q4_0.
    assert rss["f16"] - rss["q8_0"] > 120 * MIB, rss
    assert rss["q8_0"] - rss["q4_0"] > 50 * MIB, rss


@pytest.mark.parametrize(("env", "warning"), [
    ({"OLLAMA_KV_CACHE_TYPE": "q9"}, "OLLAMA_KV_CACHE_TYPE"),
    ({"OLLAMA_KV_CACHE_TYPE": "q8_0", "OLLAMA_FLASH_ATTENTION": "false"},
     "needs flash attention"),
])
def test_bad_settings_fall_back_to_f16(tmp_path: Path, env: dict[str, str],
                                       warning: str) -> None:
    _, answer, log = _serve_once(tmp_path, env)
    assert answer.strip()
    assert warning in log
    assert "f16 K/V cache" in log
