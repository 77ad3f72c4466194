"""Loaded models: load on demand, keep_alive expiry, least-recently-used eviction, memory checks.

A ``Runner`` is one loaded model: its runner process (``engine.runner``) and, in the server, its
vocabulary for templates and tokenizing. ``acquire`` returns a runner for a model
and load-time settings, loading it off the event loop if needed (one load at a time, as Ollama's
loader does), after evicting idle models to stay within ``max_loaded`` and the memory budget.
``release`` starts the runner's keep_alive countdown once its last request is done. A runner
that dies leaves at once; one that dies while loading is not started again more than
``LOAD_FAILURES_PER_MINUTE`` times a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from homeport import metrics
from homeport.engine.devices import discover_devices
from homeport.engine.llama_types import ContextSettings
from homeport.engine.memory import available_memory, draft_model_bytes
from homeport.engine.placement import Placement, model_needs, place
from homeport.engine.runner import ModelLoadError, RunnerClient
from homeport.engine.worker_list import WorkerList, WorkerSource
from homeport.errors import HomeportError, ModelTooLargeError, ServerBusyError
from homeport.humanize import format_bytes
from homeport.store import ModelRecord

if TYPE_CHECKING:
    from homeport.engine.llama import LlamaModel

log = logging.getLogger(__name__)

EXPIRY_CHECK_SECONDS = 0.25
LOAD_FAILURES_PER_MINUTE = 3


@dataclass(frozen=True)
class ManagerSettings:
    max_loaded: int
    num_parallel: int
    max_queue: int
    default_keep_alive: float
    memory_limit: int = 0  # 0: what the system reports available (host memory)
    gpu_overhead: int = 0  # bytes kept free on every GPU
    spread: bool = False  # split over every offload device (OLLAMA_SCHED_SPREAD)
    # host:port of the `homeport worker`s to place layers on, asked before each load
    rpc_workers: WorkerSource = field(default_factory=WorkerList)
    load_timeout: float = 300.0


@dataclass(eq=False)
class Runner:
    """One loaded model."""

    record: ModelRecord
    settings: ContextSettings
    model: LlamaModel  # vocabulary only: the weights live in the runner process
    scheduler: RunnerClient
    placement: Placement
    load_seconds: float
    keep_alive: float
    active: int = 0
    expires_at: float = math.inf  # time.monotonic() deadline, set when the last request ends
    last_used: float = field(default_factory=time.monotonic)
    unloading: bool = False
    draft_bytes: int = 0  # its draft model's, all in host memory

    @property
    def name(self) -> str:
        return self.record.name.display

    @property
    def size(self) -> int:
        """Bytes the model takes on every device together."""
        return self.placement.total_bytes + self.draft_bytes

    @property
    def size_vram(self) -> int:
        """Bytes in this machine's GPU memory; a worker's share is in ``placement.machines()``."""
        return self.placement.local_gpu_bytes

    @property
    def host_size(self) -> int:
        return self.placement.host_bytes + self.draft_bytes

    def expires_at_wall(self) -> datetime:
        """When this model will unload, as Ollama's /api/ps shows it."""
        now = time.monotonic()
        deadline = now + self.keep_alive if self.active else self.expires_at
        if math.isinf(deadline):
            return datetime(2318, 1, 1, tzinfo=UTC)  # Ollama shows "forever" as a far date
        return datetime.now(UTC) + timedelta(seconds=max(deadline - now, 0.0))


class ModelManager:
    """Owns every loaded model; see the module docstring."""

    def __init__(self, settings: ManagerSettings) -> None:
        self.settings = settings
        self.runners: list[Runner] = []
        self._load_lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._expiry_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._load_failures: dict[tuple[Path, ContextSettings], list[float]] = {}

    async def start(self) -> None:
        self._expiry_task = asyncio.create_task(self._expire_loop(), name="keep-alive")

    async def close(self) -> None:
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry_task
        for runner in list(self.runners):
            await self._unload(runner)

    # --- queue ---------------------------------------------------------------------------------

    def queued_total(self) -> int:
        return sum(runner.scheduler.queued for runner in self.runners)

    def check_queue(self) -> None:
        """503 with Retry-After when the queue is full (the only 5xx a client should retry)."""
        if self.queued_total() >= self.settings.max_queue:
            raise ServerBusyError()

    # --- acquire / release ---------------------------------------------------------------------

    def find(self, record: ModelRecord) -> Runner | None:
        for runner in self.runners:
            if runner.record.model_path == record.model_path and not runner.unloading:
                return runner
        return None

    async def acquire(self, record: ModelRecord, settings: ContextSettings,
                      keep_alive: float | None) -> tuple[Runner, float]:
        """A runner for ``record`` with ``settings`` and the seconds spent loading it (0 if warm)."""
        runner = self.find(record)
        if runner is not None and runner.settings == settings:
            # Warm path: no lock, so a load in progress never delays a loaded model's requests.
            runner.active += 1
            runner.record = record
            return runner, 0.0
        async with self._load_lock:
            # One copy per model: every other copy goes first, those already unloading included
            # (an earlier reload whose caller gave up leaves one waiting for its last request).
            for other in self._other_copies(record, settings):
                if not other.unloading:
                    log.info("reloading %s: load-time options changed", record.name.display)
                await self._retire(other)
            runner = self.find(record)
            if runner is not None:
                runner.active += 1
                runner.record = record
                return runner, 0.0
            runner = await self._load(record, settings, keep_alive)
            runner.active += 1
            return runner, runner.load_seconds

    def _other_copies(self, record: ModelRecord, settings: ContextSettings) -> list[Runner]:
        """Runners of ``record``'s file that a request with ``settings`` cannot use."""
        return [runner for runner in self.runners
                if runner.record.model_path == record.model_path
                and (runner.unloading or runner.settings != settings)]

    def release(self, runner: Runner, keep_alive: float | None) -> None:
        """The request is done: start the keep_alive countdown when nothing else uses the model."""
        runner.active -= 1
        if runner.active == 0 and not runner.scheduler.alive:
            runner.model.close()  # its runner died while this request used the vocabulary
        runner.last_used = time.monotonic()
        if keep_alive is not None:
            runner.keep_alive = keep_alive
        if runner.active == 0:
            runner.expires_at = runner.last_used + runner.keep_alive
            if runner.keep_alive <= 0:
                # keep_alive 0: the next request loads afresh rather than reusing it.
                runner.unloading = True
            if runner.unloading:
                # Unloaded now, whoever marked it (keep_alive 0, or a reload whose caller is
                # gone): a runner no request can reach must not wait for its keep_alive.
                self._spawn(self._unload_idle(runner))
        self._spawn(self._notify())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, holding a reference until it is done."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def unload_now(self, record: ModelRecord) -> bool:
        """Unload ``record`` once its requests finish (keep_alive 0 with no prompt)."""
        runner = self.find(record)
        if runner is None:
            return False
        runner.keep_alive = 0.0
        if runner.active == 0:
            async with self._load_lock:  # never beside a load, like every other unload
                await self._unload(runner)
        return True

    # --- loading -------------------------------------------------------------------------------

    async def _load(self, record: ModelRecord, settings: ContextSettings,
                    keep_alive: float | None) -> Runner:
        self._check_load_failures(record, settings)
        devices = await discover_devices(self.settings.rpc_workers())
        draft_bytes = draft_model_bytes(settings)
        # Workers only for what this machine cannot hold (evicting idle models included).
        placement = place(model_needs(record.gguf, settings), devices, settings.num_gpu,
                          self.settings.gpu_overhead, self.settings.spread,
                          host_room=self._budget() - draft_bytes)
        if record.draft_path is not None and settings.draft_model is None:
            log.info("%s names a draft model, left unloaded: speculation is off "
                     "(HOMEPORT_SPECULATION=on uses it)", record.name.display)
        log.info("placing %s: %s%s", record.name.display, placement.describe(),
                 f", and its draft model in {format_bytes(draft_bytes)} of host memory"
                 if draft_bytes else "")
        need = placement.host_bytes + draft_bytes
        await self._make_room(record, need)
        started = time.perf_counter()
        client = RunnerClient(record.model_path, settings, record.name.display,
                              placement.offload)
        try:
            await asyncio.wait_for(client.start(), timeout=self.settings.load_timeout)
            # Only once the runner loaded the whole file: a file that crashes llama.cpp has
            # crashed the runner by now, never the server. llama.cpp is loaded into the server
            # with its first model's vocabulary, not before: a node that serves none stays light.
            from homeport.engine.vocabulary import Vocabulary

            vocabulary = await asyncio.to_thread(Vocabulary, record.model_path)
        except BaseException as exc:
            # A caller that gives up (timeout, client gone) must not strand a runner.
            self._spawn(client.kill())
            if isinstance(exc, ModelLoadError):
                self._load_failed(record.model_path, settings)
            if isinstance(exc, TimeoutError):
                raise HomeportError(
                    f"timed out loading model '{record.name.display}' after "
                    f"{self.settings.load_timeout:.0f}s") from None
            raise
        runner = Runner(
            record=record, settings=settings, model=vocabulary, scheduler=client,
            placement=placement, draft_bytes=draft_bytes,
            load_seconds=time.perf_counter() - started,
            keep_alive=self.settings.default_keep_alive if keep_alive is None else keep_alive,
        )
        client.on_exit = lambda before_working: self._runner_died(runner, before_working)
        self.runners.append(runner)
        metrics.LOADED_MODELS.set(len(self.runners))
        log.info("loaded %s (num_ctx %d x %d slots, %s K/V cache, ~%s) in %.2fs", runner.name,
                 settings.n_ctx_per_seq, settings.n_seq, settings.kv_cache_type,
                 format_bytes(runner.size), runner.load_seconds)
        return runner

    def _check_load_failures(self, record: ModelRecord, settings: ContextSettings) -> None:
        """400 without trying when this model crashed on loading too often in the last minute."""
        key = (record.model_path, settings)
        now = time.monotonic()
        recent = [at for at in self._load_failures.get(key, ()) if now - at < 60]
        if recent:
            self._load_failures[key] = recent
        else:
            self._load_failures.pop(key, None)
        if len(recent) >= LOAD_FAILURES_PER_MINUTE:
            raise ModelLoadError(
                f"model failed to load ({record.name.display}): it failed {len(recent)} times in "
                "the last minute; try again later")

    def _load_failed(self, path: Path, settings: ContextSettings) -> None:
        self._load_failures.setdefault((path, settings), []).append(time.monotonic())

    def _runner_died(self, runner: Runner, before_working: bool) -> None:
        """A runner's process ended unasked: forget it, so the next request loads afresh."""
        if before_working:
            self._load_failed(runner.record.model_path, runner.settings)
        runner.unloading = True
        if runner in self.runners:
            self.runners.remove(runner)
            metrics.LOADED_MODELS.set(len(self.runners))
        if runner.active == 0:
            runner.model.close()
        self._spawn(self._notify())

    def _budget(self) -> int:
        """Bytes all loaded models together may use."""
        loaded = sum(runner.host_size for runner in self.runners)
        if self.settings.memory_limit:
            return self.settings.memory_limit
        return available_memory() + loaded

    async def _make_room(self, record: ModelRecord, need: int) -> None:
        """Evict idle models (least recently used first) until ``need`` fits; wait for busy ones."""
        deadline = time.monotonic() + self.settings.load_timeout
        while True:
            budget = self._budget()
            if need > budget:
                raise ModelTooLargeError(
                    f"model '{record.name.display}' needs {format_bytes(need)} of host memory "
                    f"(weights and context) but only {format_bytes(budget)} is available; "
                    "try a smaller num_ctx or a smaller model")
            used = sum(runner.host_size for runner in self.runners)
            if len(self.runners) < self.settings.max_loaded and used + need <= budget:
                return
            idle = sorted((r for r in self.runners if r.active == 0), key=lambda r: r.last_used)
            if idle:
                log.info("evicting %s to make room for %s", idle[0].name, record.name.display)
                await self._unload(idle[0])
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerBusyError("server busy: every loaded model is in use", retry_after=5)
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 1.0))

    async def _retire(self, runner: Runner) -> None:
        """Unload ``runner`` after its running requests finish (a reload with new settings).
        If the caller gives up meanwhile, ``release`` unloads it after its last request."""
        runner.unloading = True
        while runner.active > 0:
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=1.0)
        await self._unload(runner)

    async def _unload_idle(self, runner: Runner) -> None:
        async with self._load_lock:  # never beside a load, like every other unload
            if runner.active == 0:
                await self._unload(runner)

    async def _unload(self, runner: Runner) -> None:
        if runner not in self.runners:
            return
        runner.unloading = True
        self.runners.remove(runner)
        metrics.LOADED_MODELS.set(len(self.runners))
        await runner.scheduler.stop()
        await asyncio.to_thread(runner.model.close)
        log.info("unloaded %s", runner.name)
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_CHECK_SECONDS)
            now = time.monotonic()
            for runner in list(self.runners):
                if runner.active == 0 and now >= runner.expires_at:
                    async with self._load_lock:
                        if runner.active == 0 and now >= runner.expires_at:
                            await self._unload(runner)

