"""A model file that passes validation but makes llama.cpp abort on its first decode: the chat is a
400 saying the model failed to load (with the assert's message, no paths), the bundled model's
stream beside it is untouched, and a client retrying in a loop cannot respawn the model's runner
more than ``LOAD_FAILURES_PER_MINUTE`` times. Norm epsilons that make ggml assert are refused
from the header instead, before llama.cpp ever sees them."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from homeport.engine.manager import LOAD_FAILURES_PER_MINUTE
from homeport.errors import InvalidModelFileError
from homeport.store.gguf import read_gguf
from tests.conftest import MODEL
from tests.support.gguf_files import write_tiny_llama
from tests.support.models import install_model
from tests.support.server import ServerProcess

# Norm weights stored as f16: the header is consistent and llama.cpp loads the file, but ggml's
# CPU multiply has no f32 x f16 kernel, so the first decode aborts ("binary_op: unsupported
# types"). Which types each op supports depends on the backend, so validation leaves it be.
BROKEN = "f16-norms:latest"
ABORT = "binary_op: unsupported types"
BOUNDED = {"temperature": 0, "seed": 1, "num_predict": 32}


def chat(model: str, **fields: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "Write a haiku about ports"}],
            "options": BOUNDED, **fields}


@pytest.mark.parametrize("eps", [math.nan, -1e-5], ids=["nan", "negative"])
def test_a_norm_epsilon_ggml_would_assert_on_is_refused(tmp_path: Path, eps: float) -> None:
    # read_gguf only parses the header: the file never reaches llama.cpp in this process.
    with pytest.raises(InvalidModelFileError) as refused:
        read_gguf(write_tiny_llama(tmp_path / "eps.gguf", rms_eps=eps))
    assert "llama.attention.layer_norm_rms_epsilon is" in refused.value.message
    assert read_gguf(write_tiny_llama(tmp_path / "zero.gguf", rms_eps=0.0)).block_count == 1


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("runner-failures")
    broken = write_tiny_llama(home / "f16-norms.gguf", norm_dtype=np.float16)
    read_gguf(broken)  # passes validation: only llama.cpp finds the fault
    install_model(home / "data" / "models", BROKEN, broken)
    env = {"HOMEPORT_NUM_PARALLEL": "1", "HOMEPORT_CONTEXT_LENGTH": "2048",
           "HOMEPORT_KEEP_ALIVE": "10m"}
    with ServerProcess(home, env=env) as process:
        yield process


def spawns(server: ServerProcess) -> int:
    """Runners the server started for the broken model (one "placing" line before each)."""
    return server.log().count(f"placing {BROKEN}:")


def test_a_model_that_aborts_on_its_first_decode_is_a_400_and_the_other_model_streams_on(
        server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=120) as http:
        # keep_alive 0: the stream below starts from a freshly loaded model too.
        alone = http.post("/api/chat", json=chat(MODEL, stream=False, keep_alive=0))
        assert alone.status_code == 200, alone.text
        with http.stream("POST", "/api/chat", json=chat(MODEL)) as stream:
            lines = stream.iter_lines()
            records = [json.loads(next(lines))]
            assert records[0]["done"] is False
            failed = http.post("/api/chat", json=chat(BROKEN, stream=False))
            records += [json.loads(line) for line in lines if line]
        assert failed.status_code == 400, failed.text
        error = failed.json()["error"]
        assert error.startswith(f"model failed to load ({BROKEN}): ")
        assert ABORT in error
        assert "/" not in error  # no paths from llama.cpp's sources
        assert records[-1]["done"] is True
        assert "error" not in records[-1]
        text = "".join(str(record["message"]["content"]) for record in records)
        assert text == alone.json()["message"]["content"]
        assert http.post("/api/chat", json=chat(MODEL, stream=False)).status_code == 200
    assert server.alive()


def test_retrying_in_a_loop_respawns_the_runner_only_a_few_times_a_minute(
        server: ServerProcess) -> None:
    before = spawns(server)
    assert 1 <= before <= LOAD_FAILURES_PER_MINUTE
    started = time.monotonic()
    errors = []
    with httpx.Client(base_url=server.url, timeout=120) as http:
        for _ in range(2 * LOAD_FAILURES_PER_MINUTE):
            reply = http.post("/api/chat", json=chat(BROKEN, stream=False))
            assert reply.status_code == 400, reply.text
            errors.append(reply.json()["error"])
    assert all(error.startswith(f"model failed to load ({BROKEN})") for error in errors)
    # Each failure takes a second or two, so all of them normally fall within one minute: the
    # first LOAD_FAILURES_PER_MINUTE spawned a runner (the test above's included), every later
    # request was refused without one. The bound allows a window more for each minute the
    # loop (and the test above, which ran just before it) took on a slow machine.
    windows = 2 + int((time.monotonic() - started) // 60)
    spawned = spawns(server) - before
    refused = [error for error in errors
               if f"failed {LOAD_FAILURES_PER_MINUTE} times in the last minute" in error]
    assert before + spawned <= LOAD_FAILURES_PER_MINUTE * windows
    assert len(refused) == len(errors) - spawned, errors
    assert refused[-1] == errors[-1], errors  # the loop ends refused, whatever the clock did
    reply = httpx.post(f"{server.url}/api/chat", timeout=120, json=chat(MODEL, stream=False))
    assert reply.status_code == 200
