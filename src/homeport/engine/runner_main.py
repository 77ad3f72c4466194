"""A runner process: one loaded model, its scheduler and llama.cpp, away from the server.

``engine.runner`` starts it as ``python -m homeport.engine.runner_main --fd N ...`` with one end of
a socketpair. It loads the model, answers ``ready``, then runs the ``Scheduler`` unchanged: requests
arrive as messages, and each scheduler step's events go back as one message. If llama.cpp aborts
or crashes, only this process dies; the server notices the channel closing. It also dies with the
server: the kernel kills it when the server dies (PR_SET_PDEATHSIG), and it exits when the channel
closes.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from functools import partial
from typing import Any

from prometheus_client.metrics import Gauge, MetricWrapperBase

from homeport import metrics
from homeport.engine.draft_model import DraftModel, check_same_vocabulary, draft_context_settings
from homeport.engine.llama import EngineError, LlamaModel, Sampler
from homeport.engine.runner_protocol import MetricOp, frame, receive_blocking
from homeport.engine.scheduler import (
    EmbeddingJob,
    Event,
    Failed,
    Finished,
    Job,
    Outbox,
    Scheduler,
)
from homeport.engine.worker_watch import start_watching
from homeport.errors import HomeportError

log = logging.getLogger("homeport.runner")

PR_SET_PDEATHSIG = 1


@dataclass
class RunnerJob(Job):
    """A job that knows the id the server gave it."""

    job_id: int = 0
    reported: int = 0  # generated tokens already sent to the server


class Channel:
    """The runner's end: sends carry the metric updates recorded since the last send."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()  # the scheduler thread and the main thread both send
        self._ops: list[MetricOp] = []

    def record(self, op: MetricOp, *, now: bool) -> None:
        with self._lock:
            self._ops.append(op)
        if now:
            self.send("metrics", None)

    def send(self, kind: str, payload: Any) -> None:
        with self._lock:
            ops, self._ops = self._ops, []
            try:
                self.sock.sendall(frame((kind, payload, ops)))
            except OSError:
                os._exit(0)  # the server is gone: nobody is left to answer

    def receive(self) -> tuple[Any, ...]:
        try:
            return receive_blocking(self.sock)
        except (EOFError, OSError):
            os._exit(0)


class _MetricRecorder:
    """Stands in for one prometheus metric (or one labelled child of it) in homeport.metrics."""

    def __init__(self, channel: Channel, name: str, gauge: bool,
                 labels: tuple[str, ...] = ()) -> None:
        self._channel = channel
        self._name = name
        self._gauge = gauge
        self._labels = labels

    def labels(self, *values: str) -> _MetricRecorder:
        return _MetricRecorder(self._channel, self._name, self._gauge, tuple(map(str, values)))

    def _record(self, method: str, value: float) -> None:
        # Gauges (queue depth, busy slots) go at once: the server answers /api/ps and its queue
        # limit from them. Counters and histograms ride along with the next message.
        self._channel.record((self._name, self._labels, method, value), now=self._gauge)

    def inc(self, value: float = 1) -> None:
        self._record("inc", value)

    def dec(self, value: float = 1) -> None:
        self._record("dec", value)

    def set(self, value: float) -> None:
        self._record("set", value)

    def observe(self, value: float) -> None:
        self._record("observe", value)


def forward_metrics(channel: Channel) -> None:
    """Replace every metric in homeport.metrics with a recorder that forwards to the server."""
    for name, metric in list(vars(metrics).items()):
        if isinstance(metric, MetricWrapperBase):
            setattr(metrics, name, _MetricRecorder(channel, name, isinstance(metric, Gauge)))


class RunnerLoop:
    """Serves the server's messages with one model and its scheduler."""

    def __init__(self, model: LlamaModel, label: str, channel: Channel,
                 draft: DraftModel | None = None) -> None:
        self.model = model
        self.draft = draft
        self.channel = channel
        self.jobs: dict[int, RunnerJob] = {}
        self.scheduler = Scheduler(model, model.settings.n_seq, model.settings.n_batch, label,
                                   deliver=self._deliver, speculation=model.settings.speculation,
                                   cache_bytes=model.settings.cache_ram, draft_model=draft)

    def _deliver(self, outbox: Outbox) -> None:
        events: list[tuple[int, Event, tuple[int, ...], bool]] = []
        for job, event in outbox:
            assert isinstance(job, RunnerJob)
            new_tokens = tuple(job.generated[job.reported:])
            job.reported = len(job.generated)
            events.append((job.job_id, event, new_tokens, bool(job.admitted_at)))
            if isinstance(event, Finished | Failed):
                self.jobs.pop(job.job_id, None)
        self.channel.send("events", events)

    def _embedded(self, job_id: int, result: list[float] | HomeportError) -> None:
        self.channel.send("embedded", (job_id, result))

    def serve(self) -> None:
        while True:
            kind, payload = self.channel.receive()
            if kind == "submit":
                job_id, prompt, sampling, num_predict, stop, draft_limit = payload
                job = RunnerJob(prompt=prompt, sampling=sampling, sink=_no_sink,
                                num_predict=num_predict, stop=stop, draft_limit=draft_limit,
                                job_id=job_id)
                try:
                    # On this thread, not the scheduler's: a grammar takes a while to compile.
                    job.sampler = Sampler(self.model, sampling)
                except HomeportError as exc:
                    self.channel.send("events", [(job_id, Failed(exc), (), False)])
                    continue
                self.jobs[job_id] = job
                self.scheduler.submit(job)
            elif kind == "cancel":
                cancelled = self.jobs.pop(payload, None)
                if cancelled is not None:
                    cancelled.cancel()
                    self.scheduler.wake()
            elif kind == "embed":
                job_id, tokens = payload
                self.scheduler.submit_embedding(EmbeddingJob(tokens, partial(self._embedded,
                                                                             job_id)))
            elif kind == "stop":
                self.scheduler.stop()
                if self.draft is not None:
                    self.draft.close()
                self.model.close()
                return


def _no_sink(event: Event) -> None:
    """Events go to the server through ``RunnerLoop._deliver``, never through a sink here."""


def load_draft_model(model: LlamaModel) -> DraftModel:
    """The draft model ``model``'s settings name, checked to share its vocabulary."""
    assert model.settings.draft_model is not None
    try:
        draft = LlamaModel(model.settings.draft_model, draft_context_settings(model.settings))
    except HomeportError as exc:
        raise EngineError(f"the draft model: {exc.message}") from None
    try:
        check_same_vocabulary(model, draft)
    except HomeportError:
        draft.close()
        raise
    log.info("drafting with %s", model.settings.draft_model.name)
    return DraftModel(draft, model.n_vocab)


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to kill this process when the server dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the server died before the request above took effect
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="homeport-runner")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--model", required=True, help="the model's name, for logs and metrics")
    parser.add_argument("--log-level", type=int, default=logging.INFO)
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    # Ctrl-C reaches the whole process group; the server stops its runners itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    channel = Channel(socket.socket(fileno=args.fd))
    forward_metrics(channel)
    kind, (path, settings, offload) = channel.receive()
    assert kind == "load"
    try:
        model = LlamaModel(path, settings, offload)
        draft = load_draft_model(model) if settings.draft_model is not None else None
    except HomeportError as exc:
        channel.send("failed", exc)
        return 1
    loop = RunnerLoop(model, args.model, channel, draft)
    start_watching(offload.rpc_servers)
    channel.send("ready", None)
    loop.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
