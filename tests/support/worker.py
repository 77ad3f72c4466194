"""A real ``homeport worker`` process for a test: ggml's RPC servers behind the worker's gate."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.server import end_process, free_port, isolated_env

START_TIMEOUT = 120.0
READY = "worker listening on"
# ggml's RPC server prints this (and flushes) each time a connection reaches it.
ACCEPTED = "Accepted client connection"


class WorkerProcess:
    """``python -m homeport worker --listen host:port``; ``endpoint`` is what servers name."""

    def __init__(self, home: Path, host: str = "127.0.0.1", port: int | None = None,
                 env: Mapping[str, str] | None = None, slots: int = 2, threads: int = 1,
                 wrapper: Sequence[str] = (), extra_args: Sequence[str] = ()) -> None:
        self.home = home
        self.host = host
        self.port = port or free_port()
        self.env = isolated_env(home, env)
        self.args = ["--slots", str(slots), "--threads", str(threads), *extra_args]
        self.wrapper = tuple(wrapper)
        self.log_path = home / f"worker-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> WorkerProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.wrapper, sys.executable, "-m", "homeport", "worker", "--listen",
                 self.endpoint, *self.args],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while READY not in self.log():
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start within {START_TIMEOUT}s:\n{self.log()}")
            time.sleep(0.1)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def accepted(self) -> int:
        """Connections that reached ggml's RPC server so far."""
        return self.log().count(ACCEPTED)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the worker dies as a crashed or unplugged machine would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        return end_process(self.process)

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
