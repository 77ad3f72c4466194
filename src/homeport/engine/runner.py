"""The server's side of a runner process (``runner_main``): start it, talk to it, outlive it.

A ``RunnerClient`` stands where an in-process ``Scheduler`` stood, with the same small surface
(``submit``, ``submit_embedding``, ``wake``, ``queued``, ``busy_slots``, ``stop``). Its reader task
runs on the event loop: it hands each job's events to the job's sink and applies the runner's metric
updates to the server's registry. When the channel closes without a stop having been asked for, the
runner died (an abort, a crash, a kill): every request it still had ends with an error naming the
model (the assert's message when llama.cpp printed one), the process is reaped, its share of the
gauges is taken back, and ``on_exit`` tells the manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client import Gauge

from homeport import metrics
from homeport.engine.llama_types import (
    ContextSettings,
    EngineError,
    Offload,
    kernel_environment,
)
from homeport.engine.runner_protocol import HEADER, MetricOp, body_size, frame, parse
from homeport.engine.scheduler import EmbeddingJob, Failed, Finished, Job
from homeport.errors import BadRequestError, HomeportError

log = logging.getLogger(__name__)

STOP_TIMEOUT = 30.0  # seconds a runner has to finish its requests' last step and exit
REAP_TIMEOUT = 5.0
STDERR_TAIL_LINES = 50
STDERR_LINE_LIMIT = 1 << 20
# ggml_abort (which GGML_ASSERT calls) prints "file:line: message"; only the message is shown. A
# runner that ends itself says why at CRITICAL (engine.worker_watch).
_ABORT_LINE = re.compile(r"^(\S+?:\d+|CRITICAL homeport\.runner): (?P<message>.+)$")
_MESSAGE_LIMIT = 300


class ModelLoadError(BadRequestError):
    """The model's runner died while loading it or on its first step: the file is at fault."""


class RunnerStoppedError(EngineError):
    """The model's runner died while serving requests."""


def abort_message(lines: Iterable[str]) -> str | None:
    """The last abort message among a runner's stderr lines, without its source path."""
    found = None
    for line in lines:
        match = _ABORT_LINE.match(line)
        if match:
            found = match.group("message").strip()[:_MESSAGE_LIMIT]
    return found


def _level_of(line: str) -> int:
    """A runner's own log lines start with their level; anything else (llama.cpp) is a warning."""
    level = logging.getLevelName(line.split(" ", 1)[0])
    return level if isinstance(level, int) else logging.WARNING


class RunnerClient:
    """One runner process; see the module docstring."""

    def __init__(self, path: Path, settings: ContextSettings, label: str,
                 offload: Offload | None = None) -> None:
        self.path = path
        self.settings = settings
        self.offload = offload or Offload()
        self.label = label
        self.on_exit: Callable[[bool], None] | None = None  # called with "died before working"
        self.alive = False
        self.stepped = False  # a scheduler step's events arrived: the model works
        self._stopping = False
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._ids = itertools.count(1)
        self._jobs: dict[int, Job] = {}
        self._embeddings: dict[int, EmbeddingJob] = {}
        self._gauges: dict[tuple[str, tuple[str, ...]], float] = {}  # this runner's share

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # --- starting and stopping -----------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the runner and wait until it has loaded the model; ModelLoadError if it dies."""
        ours, theirs = socket.socketpair()
        try:
            # Spawned from the event loop's thread, which lives as long as the server: the
            # runner's PR_SET_PDEATHSIG fires when the thread that forked it ends.
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "homeport.engine.runner_main",
                "--fd", str(theirs.fileno()), "--parent", str(os.getpid()),
                "--model", self.label, "--log-level", str(logging.getLogger().getEffectiveLevel()),
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                # An abort's message is enough: ggml's backtrace attaches gdb to the dying
                # runner, which takes seconds (minutes on a busy machine) and prints paths.
                env={**os.environ, "GGML_NO_BACKTRACE": "1", **kernel_environment(self.settings)},
                stderr=asyncio.subprocess.PIPE, limit=STDERR_LINE_LIMIT)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._stderr_task = asyncio.create_task(self._relay_stderr())
        self._reader, self._writer = await asyncio.open_unix_connection(sock=ours)
        self._send("load", (self.path, self.settings, self.offload))
        try:
            kind, payload, ops = await self._receive()
        except (EOFError, OSError):
            await self._reap()
            raise ModelLoadError(self._death_message()) from None
        self._apply_metrics(ops)
        if kind == "failed":
            await self._reap()
            raise payload if isinstance(payload, HomeportError) else EngineError(str(payload))
        self.alive = True
        self._read_task = asyncio.create_task(self._read_loop(), name=f"runner-{self.label}")

    async def stop(self) -> None:
        """Ask the runner to finish (it fails what is left) and exit; kill it if it does not."""
        if self._process is None:
            return
        self._stopping = True
        if self.alive:
            self._send("stop", None)
        try:
            await asyncio.wait_for(asyncio.shield(self._process.wait()), timeout=STOP_TIMEOUT)
        except TimeoutError:
            log.warning("runner for %s did not stop within %.0fs: killing it", self.label,
                        STOP_TIMEOUT)
            self._kill()
        if self._read_task is not None:
            await self._read_task
        else:
            await self._reap()

    async def kill(self) -> None:
        """End a runner whose load was abandoned."""
        self._stopping = True
        self._kill()
        if self._read_task is not None:
            await self._read_task
        else:
            await self._reap()

    def _kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

    async def _reap(self) -> None:
        """Wait for the process to exit (no zombie) and for its last stderr lines."""
        self.alive = False
        if self._writer is not None:
            self._writer.close()
        if self._process is not None:
            await self._process.wait()
        if self._stderr_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stderr_task, timeout=REAP_TIMEOUT)

    # --- the scheduler's surface ---------------------------------------------------------------

    def submit(self, job: Job) -> None:
        if not self.alive or self._stopping:
            raise HomeportError("the model is being unloaded")
        job_id = next(self._ids)
        self._jobs[job_id] = job
        self._send("submit", (job_id, job.prompt, job.sampling, job.num_predict, job.stop,
                              job.draft_limit))

    def submit_embedding(self, job: EmbeddingJob) -> None:
        if not self.alive or self._stopping:
            job.done(HomeportError("the model is being unloaded"))
            return
        job_id = next(self._ids)
        self._embeddings[job_id] = job
        self._send("embed", (job_id, job.tokens))

    def wake(self) -> None:
        """Pass on the cancellation of any job whose client left."""
        for job_id, job in list(self._jobs.items()):
            if job.cancelled:
                del self._jobs[job_id]
                self._send("cancel", job_id)

    @property
    def busy_slots(self) -> int:
        return int(self._gauges.get(("BUSY_SLOTS", (self.label,)), 0))

    @property
    def queued(self) -> int:
        return max(0, len(self._jobs) - self.busy_slots)

    # --- the channel ---------------------------------------------------------------------------

    def _send(self, kind: str, payload: Any) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(frame((kind, payload)))

    async def _receive(self) -> tuple[Any, ...]:
        assert self._reader is not None
        try:
            header = await self._reader.readexactly(HEADER.size)
            return parse(await self._reader.readexactly(body_size(header)))
        except asyncio.IncompleteReadError:
            raise EOFError("runner channel closed") from None

    async def _read_loop(self) -> None:
        try:
            while True:
                kind, payload, ops = await self._receive()
                self._apply_metrics(ops)
                if kind == "events":
                    self.stepped = True
                    self._deliver(payload)
                elif kind == "embedded":
                    job_id, result = payload
                    embedding = self._embeddings.pop(job_id, None)
                    if embedding is not None:
                        embedding.done(result)
        except (EOFError, OSError):
            pass
        except Exception:  # a message we cannot read: treat the runner as broken
            log.exception("runner for %s sent an unreadable message", self.label)
            self._kill()
        await self._reap()
        self._ended()

    def _deliver(self, events: list[tuple[int, Any, tuple[int, ...], bool]]) -> None:
        for job_id, event, new_tokens, admitted in events:
            job = self._jobs.get(job_id)
            if job is None:  # cancelled meanwhile
                continue
            # The server's copy of the job counts what it cost, as Generation.tokens_used reads.
            job.generated.extend(new_tokens)
            if admitted and not job.admitted_at:
                job.admitted_at = time.perf_counter()
            if isinstance(event, Finished | Failed):
                del self._jobs[job_id]
            job.sink(event)

    def _ended(self) -> None:
        """The runner is gone: end every request it still had, give back its gauges."""
        died = not self._stopping
        if died:
            assert self._process is not None
            log.warning("the runner for %s exited unexpectedly (status %s)", self.label,
                        self._process.returncode)
            message = self._death_message()
            error: HomeportError = (RunnerStoppedError(message) if self.stepped
                                    else ModelLoadError(message))
        else:
            error = HomeportError("the model was unloaded before the request finished")
        jobs, self._jobs = list(self._jobs.values()), {}
        embeddings, self._embeddings = list(self._embeddings.values()), {}
        for job in jobs:
            job.sink(Failed(error))
        for embedding in embeddings:
            embedding.done(error)
        for (name, labels), share in self._gauges.items():
            metric = getattr(metrics, name)
            (metric.labels(*labels) if labels else metric).dec(share)
        self._gauges.clear()
        if died and self.on_exit is not None:
            self.on_exit(not self.stepped)

    def _death_message(self) -> str:
        what = ("the model's runner stopped unexpectedly" if self.stepped
                else "model failed to load")
        detail = abort_message(self._stderr_tail)
        return f"{what} ({self.label}): {detail}" if detail else f"{what} ({self.label})"

    def _apply_metrics(self, ops: list[MetricOp]) -> None:
        for name, labels, method, value in ops:
            metric = getattr(metrics, name)
            getattr(metric.labels(*labels) if labels else metric, method)(value)
            if isinstance(metric, Gauge) and method in ("inc", "dec"):
                key = (name, labels)
                self._gauges[key] = self._gauges.get(key, 0.0) + (
                    value if method == "inc" else -value)

    async def _relay_stderr(self) -> None:
        """The runner's log lines and llama.cpp's messages, into the server's log."""
        assert self._process is not None
        assert self._process.stderr is not None
        with contextlib.suppress(ValueError, OSError):  # a line over the limit ends the relay
            async for raw in self._process.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    self._stderr_tail.append(line)
                    log.log(_level_of(line), "runner %s: %s", self.label, line)
