"""The servers under test, each started by the benchmark on a free loopback port and always stopped.

Every peer serves the same GGUF file with the same settings: context per slot, CPU threads, batch
size, 4 slots where the server has slots (llama-cpp-python's server has one). Each runs in its own
process group so that stopping it never touches anything the benchmark did not start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.llamacpp_build import LlamaTools
from bench.streams import Endpoint, Protocol
from homeport.store.bundled import BUNDLED_NAME

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 180.0
STOP_TIMEOUT = 15.0
ALIAS = "smollm2"


class PeerError(RuntimeError):
    """A peer did not start; the message carries the end of its log."""


@dataclass(frozen=True)
class Settings:
    """What every peer is given alike."""

    model_path: Path
    threads: int
    ctx_per_slot: int = 4096
    parallel: int = 4
    batch: int = 512
    max_tokens: int = 128


@dataclass(frozen=True)
class PeerSpec:
    """How to start one peer and talk to it."""

    name: str
    description: str
    command: list[str]
    endpoint: Endpoint
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env() -> dict[str, str]:
    """This process's environment without any HOMEPORT_* / OLLAMA_* / LLAMA_ARG_* setting."""
    return {key: value for key, value in os.environ.items()
            if not key.startswith(("HOMEPORT_", "OLLAMA_", "LLAMA_ARG_"))}


HOMEPORT_PROTOCOLS: dict[str, Protocol] = {"homeport": "openai", "homeport-ollama": "ollama"}


def homeport_spec(settings: Settings, work_dir: Path, name: str, *,
                  protocol: Protocol | None = None, model: str = BUNDLED_NAME,
                  extra_env: dict[str, str] | None = None) -> PeerSpec:
    """homeport from this checkout's ``src`` (not whatever is installed), isolated folders;
    ``name`` says which API it is driven through (``HOMEPORT_PROTOCOLS``) unless ``protocol``
    does; ``extra_env`` adds settings (another bundled model, a feature switched off)."""
    protocol = protocol or HOMEPORT_PROTOCOLS[name]
    port = free_port()
    env = _clean_env()
    env.update({
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")])),
        "HOMEPORT_DATA_DIR": str(work_dir / "data"),
        "HOMEPORT_CONFIG_DIR": str(work_dir / "config"),
        "HOMEPORT_EXTRA_STORES": "",
        "HOMEPORT_NUM_PARALLEL": str(settings.parallel),
        "HOMEPORT_CONTEXT_LENGTH": str(settings.ctx_per_slot),
        "HOMEPORT_NUM_THREADS": str(settings.threads),
        "HOMEPORT_KEEP_ALIVE": "-1",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    })
    api = "Ollama /api/chat" if protocol == "ollama" else "OpenAI /v1/chat/completions"
    shown = "".join(f", {key}={value}" for key, value in (extra_env or {}).items())
    return PeerSpec(
        name=name,
        description=f"homeport serve, {settings.parallel} slots, {api}{shown}",
        command=[sys.executable, "-m", "homeport", "serve", "--host", f"127.0.0.1:{port}"],
        endpoint=Endpoint(f"http://127.0.0.1:{port}", protocol, model),
        ready_path="/", env=env,
    )


def llama_server_spec(settings: Settings, tools: LlamaTools, *, name: str = "llama-server",
                      extra_args: tuple[str, ...] = ()) -> PeerSpec:
    """llama.cpp's own server: ``-np`` slots, continuous batching, ``-c`` split among the slots;
    ``extra_args`` adds options (speculative decoding, the RAM prompt cache)."""
    port = free_port()
    threads = str(settings.threads)
    shown = " ".join(extra_args)
    return PeerSpec(
        name=name,
        description=f"llama-server -np {settings.parallel} -cb{' ' + shown if shown else ''}, "
                    "OpenAI /v1/chat/completions",
        command=[
            str(tools.path("llama-server")), "--model", str(settings.model_path), "--alias", ALIAS,
            "--host", "127.0.0.1", "--port", str(port),
            "--parallel", str(settings.parallel), "--cont-batching", "--no-kv-unified",
            "--ctx-size", str(settings.ctx_per_slot * settings.parallel),
            "--threads", threads, "--threads-batch", threads,
            "--batch-size", str(settings.batch), "--ubatch-size", str(settings.batch),
            *extra_args,
        ],
        endpoint=Endpoint(f"http://127.0.0.1:{port}", "openai", ALIAS, {"ignore_eos": True}),
        ready_path="/health", env=_clean_env(),
    )


def llama_cpp_python_spec(settings: Settings, eog_tokens: list[int]) -> PeerSpec:
    """llama-cpp-python's server with its defaults, apart from the settings all peers share.

    It has no ignore_eos; a large negative logit bias on every end-of-generation token does the same.
    """
    port = free_port()
    threads = str(settings.threads)
    bias = {"logit_bias": {str(token): -1000.0 for token in eog_tokens}}
    return PeerSpec(
        name="llama-cpp-python",
        description="python -m llama_cpp.server (one request at a time), OpenAI /v1/chat/completions",
        command=[
            sys.executable, "-m", "llama_cpp.server", "--model", str(settings.model_path),
            "--model_alias", ALIAS, "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", str(settings.ctx_per_slot), "--n_threads", threads,
            "--n_threads_batch", threads, "--n_batch", str(settings.batch),
            "--n_ubatch", str(settings.batch), "--verbose", "False",
        ],
        endpoint=Endpoint(f"http://127.0.0.1:{port}", "openai", ALIAS, bias),
        ready_path="/v1/models", env=_clean_env(),
    )


@contextlib.contextmanager
def running(spec: PeerSpec, log_path: Path) -> Iterator[Endpoint]:
    """Start ``spec``, wait until it answers, and stop it on the way out, whatever happened."""
    with running_process(spec, log_path):
        yield spec.endpoint


@contextlib.contextmanager
def running_process(spec: PeerSpec, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``running``, giving the peer's process (for its memory, say)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(spec.command, env=spec.env, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    try:
        _wait_ready(spec, process, log_path)
        yield process
    finally:
        _stop(process)


def _wait_ready(spec: PeerSpec, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    url = spec.endpoint.base_url + spec.ready_path
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PeerError(f"{spec.name} exited with {process.returncode}:\n{_tail(log_path)}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise PeerError(f"{spec.name} did not answer within {START_TIMEOUT:.0f}s:\n{_tail(log_path)}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the peer's own process group, then SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(STOP_TIMEOUT)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
