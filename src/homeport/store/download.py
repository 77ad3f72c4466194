"""Downloading one blob: ranged parts in parallel, resumable, verified before it is visible.

The bytes go to ``sha256-<hex>.partial`` at their offsets; which parts are done is recorded beside
it (``.partial.json``, rewritten every half second and on exit), so a pull that was cut off, or a
server that was killed, resumes where it stopped. Only when every byte is there and the file's
sha256 equals the digest is it renamed to ``sha256-<hex>``; a mismatch deletes it. Nothing is ever
written past the size the manifest declared, and a size the registry contradicts is refused.

``Downloads`` shares one download among every pull that wants the same digest at the same time;
it is cancelled (its partial file kept) only when the last of them goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from homeport.errors import InsufficientStorageError, RegistryError, RegistryRefusedError, StorageError
from homeport.humanize import format_bytes
from homeport.store.digests import (
    blob_path,
    partial_path,
    partial_state_path,
    sha256_file,
    short_digest,
)
from homeport.store.registry import BlobLocation, RegistryClient

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
RETRY_FIRST_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0
STATE_EVERY_SECONDS = 0.5
PROGRESS_EVERY_SECONDS = 0.1
MAX_PARTS = 64
DISK_RESERVE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class DownloadSettings:
    connections: int = 8
    part_size: int = 64 * 1024 * 1024


@dataclass
class Part:
    offset: int
    size: int
    completed: int = 0

    @property
    def done(self) -> bool:
        return self.completed >= self.size

    @property
    def start(self) -> int:
        return self.offset + self.completed

    @property
    def end(self) -> int:
        return self.offset + self.size - 1


def plan_parts(size: int, settings: DownloadSettings) -> list[Part]:
    part_size = max(settings.part_size, math.ceil(size / MAX_PARTS), 1)
    return [Part(offset, min(part_size, size - offset)) for offset in range(0, size, part_size)]


class _ShortRead(Exception):
    """The server ended a part's response before its last byte."""


def check_disk_space(folder: Path, need: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if need > free - DISK_RESERVE_BYTES:
        raise InsufficientStorageError(
            f"not enough disk space for {what}: it needs {format_bytes(need)} and "
            f"{format_bytes(max(free - DISK_RESERVE_BYTES, 0))} is free")


class BlobDownload:
    """One blob's download; ``run()`` once, as a task. ``completed`` counts bytes on disk."""

    def __init__(self, blobs_dir: Path, digest: str, size: int, registry: RegistryClient,
                 settings: DownloadSettings, after: asyncio.Task[None] | None = None) -> None:
        self.blobs_dir = blobs_dir
        self.digest = digest
        self.size = size
        self.registry = registry
        self.settings = settings
        self.after = after
        self.completed = 0
        self.done = asyncio.Event()
        self.error: BaseException | None = None
        self.waiters = 0
        self.abandoned = False
        self.task: asyncio.Task[None] | None = None
        self._partial = partial_path(blobs_dir, digest)
        self._state = partial_state_path(blobs_dir, digest)

    @property
    def short(self) -> str:
        return short_digest(self.digest)

    async def run(self) -> None:
        try:
            if self.after is not None:
                await asyncio.wait([self.after])  # a cancelled download of this blob saves first
            async with self.registry:
                await self._download()
        except asyncio.CancelledError as exc:
            self.error = exc
            raise
        except RegistryRefusedError as exc:  # the bytes cannot be trusted: start over next time
            self.error = exc
            self._discard()
        except Exception as exc:
            self.error = exc
        finally:
            self.done.set()

    async def _download(self) -> None:
        if blob_path(self.blobs_dir, self.digest).is_file():
            self.completed = self.size
            return
        location = await self.registry.locate_blob(self.digest)
        if location.size is not None and location.size != self.size:
            raise RegistryRefusedError(
                f"layer {self.short} is {location.size} bytes at the registry but its manifest "
                f"says {self.size}; a size that lies is refused")
        parts = self._load_state() if location.ranged else None
        fresh = parts is None
        if parts is None:
            parts = plan_parts(self.size, self.settings) if location.ranged else [
                Part(0, self.size)]
        check_disk_space(self.blobs_dir, sum(p.size - p.completed for p in parts),
                         f"layer {self.short}")
        try:
            fd = os.open(self._partial, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError.wrap("write to the model store", exc) from None
        try:
            if fresh:
                os.ftruncate(fd, self.size)
            self.completed = sum(part.completed for part in parts)
            await self._run_parts(fd, parts, location)
        finally:
            os.close(fd)
        await self._verify_and_commit()

    async def _run_parts(self, fd: int, parts: list[Part], location: BlobLocation) -> None:
        limit = asyncio.Semaphore(self.settings.connections)
        # Only a ranged download can resume, so only its parts are recorded.
        saver = asyncio.create_task(self._keep_saving(parts)) if location.ranged else None
        tasks = [asyncio.create_task(self._run_part(fd, part, location, limit))
                 for part in parts if not part.done]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            if saver is not None:
                saver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await saver
                self._save_state(parts)

    async def _run_part(self, fd: int, part: Part, location: BlobLocation,
                        limit: asyncio.Semaphore) -> None:
        async with limit:
            failures = 0
            while not part.done:
                before = part.completed
                try:
                    await self._fetch(fd, part, location)
                except (httpx.TransportError, RegistryError, _ShortRead) as exc:
                    failures = 1 if part.completed > before else failures + 1
                    if failures >= MAX_ATTEMPTS:
                        raise RegistryError(
                            f"downloading layer {self.short} failed {failures} times in a row: "
                            f"{exc or type(exc).__name__}") from None
                    if not location.ranged:  # the whole body again, from the start
                        self.completed -= part.completed
                        part.completed = 0
                    log.info("layer %s: part at %d interrupted (%s), resuming at %d", self.short,
                             part.offset, exc or type(exc).__name__, part.start)
                    await asyncio.sleep(min(RETRY_MAX_SECONDS,
                                            RETRY_FIRST_SECONDS * 2 ** (failures - 1)))

    async def _fetch(self, fd: int, part: Part, location: BlobLocation) -> None:
        async with self.registry.open_range(location, part.start, part.end) as response:
            async for chunk in response.aiter_raw():
                if len(chunk) > part.size - part.completed:
                    raise RegistryRefusedError(
                        f"the registry sent more bytes for layer {self.short} than its "
                        f"manifest's size ({self.size}); a size that lies is refused")
                try:
                    os.pwrite(fd, chunk, part.start)
                except OSError as exc:
                    raise StorageError.wrap("write to the model store", exc) from None
                part.completed += len(chunk)
                self.completed += len(chunk)
        if not part.done:
            raise _ShortRead(f"the response ended {part.size - part.completed} bytes early")

    async def _verify_and_commit(self) -> None:
        actual = await asyncio.to_thread(sha256_file, self._partial)
        if actual != self.digest:
            raise RegistryRefusedError(
                f"digest mismatch: layer {self.short} from the registry hashes to "
                f"{short_digest(actual)}; the download was deleted")
        os.replace(self._partial, blob_path(self.blobs_dir, self.digest))
        self._state.unlink(missing_ok=True)

    def _discard(self) -> None:
        self._partial.unlink(missing_ok=True)
        self._state.unlink(missing_ok=True)

    # --- the resume record ---------------------------------------------------------------------

    def _load_state(self) -> list[Part] | None:
        """The parts of an earlier, interrupted download of this blob, if they are believable."""
        try:
            data = json.loads(self._state.read_text())
            if data["size"] != self.size or self._partial.stat().st_size != self.size:
                return None
            parts = [Part(int(offset), int(size), int(done)) for offset, size, done in data["parts"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        expected = 0
        for part in parts:
            if part.offset != expected or part.size <= 0 or not 0 <= part.completed <= part.size:
                return None
            expected += part.size
        return parts if expected == self.size else None

    def _save_state(self, parts: list[Part]) -> None:
        record = {"digest": self.digest, "size": self.size,
                  "parts": [[part.offset, part.size, part.completed] for part in parts]}
        tmp = self._state.with_name(self._state.name + ".tmp")
        try:
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self._state)
        except OSError as exc:
            log.warning("could not record the progress of layer %s: %s", self.short, exc.strerror)

    async def _keep_saving(self, parts: list[Part]) -> None:
        while True:
            await asyncio.sleep(STATE_EVERY_SECONDS)
            self._save_state(parts)


class Downloads:
    """The blob downloads in progress, shared by every pull that wants the same digest."""

    def __init__(self) -> None:
        self._active: dict[str, BlobDownload] = {}

    async def follow(self, blobs_dir: Path, digest: str, size: int, registry: RegistryClient,
                     settings: DownloadSettings) -> AsyncIterator[int]:
        """Download ``digest`` (or join its download), yielding the bytes done so far."""
        download = self._active.get(digest)
        if download is None or download.abandoned:
            previous = download.task if download is not None else None
            download = BlobDownload(blobs_dir, digest, size, registry.fork(), settings, previous)
            self._start(download)
        download.waiters += 1
        try:
            while not download.done.is_set():
                yield download.completed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(download.done.wait(), PROGRESS_EVERY_SECONDS)
            if download.error is not None:
                raise download.error
            yield download.completed
        finally:
            download.waiters -= 1
            if download.waiters == 0 and not download.done.is_set() and download.task:
                download.abandoned = True
                download.task.cancel()

    def _start(self, download: BlobDownload) -> None:
        self._active[download.digest] = download
        download.task = asyncio.create_task(download.run())

        def forget(_: asyncio.Task[None]) -> None:
            if self._active.get(download.digest) is download:
                del self._active[download.digest]

        download.task.add_done_callback(forget)
