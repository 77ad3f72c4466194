"""Starting a real ``homeport serve`` process for a test, on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import psutil

PROJECT_SRC = Path(__file__).resolve().parents[2] / "src"
START_TIMEOUT = 60.0


def resident_bytes(pid: int) -> int:
    """Resident memory of a server and its children (each loaded model's runner process)."""
    server = psutil.Process(pid)
    return sum(process.memory_info().rss for process in [server, *server.children()])


def end_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
                timeout: float = 15.0) -> int:
    """Send ``sig`` to a process still running, wait ``timeout`` seconds for it, then kill it; its
    exit status."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def isolated_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment whose every homeport folder lies under ``home`` (a test's tmp dir)."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("HOMEPORT_", "OLLAMA_"))}
    env.update({
        "HOMEPORT_DATA_DIR": str(home / "data"),
        "HOMEPORT_CONFIG_DIR": str(home / "config"),
        "HOMEPORT_EXTRA_STORES": "",
        "PYTHONPATH": str(PROJECT_SRC),
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra or {})
    return env


class ServerProcess:
    """``python -m homeport serve`` as a child process; ``url`` is where it listens."""

    def __init__(self, home: Path, env: Mapping[str, str] | None = None,
                 args: tuple[str, ...] = (), port: int | None = None,
                 host: str = "127.0.0.1", wrapper: tuple[str, ...] = ()) -> None:
        self.home = home
        self.port = port or free_port()
        self.host = host
        self.url = f"http://{host}:{self.port}"
        self.log_path = home / f"server-{self.port}.log"
        self.env = isolated_env(home, env)
        self.args = args
        self.wrapper = wrapper  # a command that execs the server (``unshare ...``), if any
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> ServerProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*self.wrapper, sys.executable, "-m", "homeport", "serve",
             "--host", f"{self.host}:{self.port}", *self.args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            if self.answers():
                return
            time.sleep(0.1)
        raise RuntimeError(f"server did not start within {timeout}s:\n{self.log()}")

    def answers(self) -> bool:
        """Whether the server answers its root page yet."""
        try:
            return httpx.get(self.url + "/", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.process is None:
            return None
        return end_process(self.process, sig, timeout)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
