"""Tidying the writable store when the server starts, as Ollama does unless OLLAMA_NOPRUNE is set.

What goes:
- layers (``blobs/sha256-<hex>``) that no manifest in the writable root uses, once they are an
  hour old: an upload waiting for its ``create`` is younger than that;
- leftovers of writes that a crash cut short (``*.tmp``, ``*.upload-*``), once an hour old;
- partial downloads untouched for a week, or whose blob is complete anyway. A younger one stays,
  so a pull cut off by a crash or a reboot still resumes.

Nothing else in the folder is touched, read-only roots never are, and if any manifest in the
writable root cannot be read, no layer counts as unused (its layers might be the ones it needs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from homeport.humanize import format_bytes
from homeport.store.digests import (
    PARTIAL_STATE_SUFFIX,
    PARTIAL_SUFFIX,
    UPLOAD_MARKER,
    InvalidDigestError,
    blob_path,
    normalize_digest,
)
from homeport.store.store import ModelStore, UnreadableManifestError, model_folders

log = logging.getLogger(__name__)

LEFTOVER_AGE_SECONDS = 3600.0
PARTIAL_AGE_SECONDS = 7 * 86400.0


@dataclass
class PruneReport:
    layers: int = 0
    leftovers: int = 0
    partials: int = 0
    bytes_freed: int = 0

    def __str__(self) -> str:
        parts = [f"{count} {what}" for count, what in (
            (self.layers, "unused layer(s)"), (self.partials, "stale partial download file(s)"),
            (self.leftovers, "leftover temporary file(s)")) if count]
        return f"removed {', '.join(parts)}, {format_bytes(self.bytes_freed)} freed"


def _digest_of(name: str) -> str | None:
    """The digest a blob file is named after, or None for any other name."""
    try:
        return normalize_digest(name)
    except InvalidDigestError:
        return None


def _partial_digest(name: str) -> str | None:
    for suffix in (PARTIAL_STATE_SUFFIX, PARTIAL_SUFFIX):
        if name.endswith(suffix):
            return _digest_of(name.removesuffix(suffix))
    return None


def _is_leftover(name: str) -> bool:
    """A temporary file of an atomic write or an upload (never a finished blob)."""
    return name.endswith(".tmp") or name.startswith(".tmp-") or (
        UPLOAD_MARKER in name and _digest_of(name.partition(UPLOAD_MARKER)[0]) is not None)


def _files(folder: Path) -> Iterator[tuple[Path, float, int]]:
    """Plain files directly in ``folder``: path, modification time, size."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        try:
            stat = entry.lstat()
        except OSError:
            continue
        if entry.is_file() and not entry.is_symlink():
            yield entry, stat.st_mtime, stat.st_size


def prune(store: ModelStore, now: float | None = None) -> PruneReport:
    """Remove what the writable root no longer needs (see the module's doc); say what went."""
    now = time.time() if now is None else now
    report = PruneReport()
    blobs = store.primary.blobs
    with store.changes():
        try:
            used: set[str] | None = store.used_digests() | store.held_digests()
        except UnreadableManifestError as exc:
            log.warning("no unused layers removed: %s", exc)
            used = None
        entries = list(_files(blobs))
        partial_ages: dict[str, float] = {}
        for path, mtime, _ in entries:
            if (digest := _partial_digest(path.name)) is not None:
                age = now - mtime  # a partial and its record age together: the younger counts
                partial_ages[digest] = min(partial_ages.get(digest, age), age)
        for path, mtime, size in entries:
            age = now - mtime
            digest = _digest_of(path.name)
            if digest is not None:
                gone = used is not None and digest not in used and age > LEFTOVER_AGE_SECONDS
                report.layers += _remove(path, size, report) if gone else 0
            elif (digest := _partial_digest(path.name)) is not None:
                stale = partial_ages[digest] > PARTIAL_AGE_SECONDS
                if stale or blob_path(blobs, digest).is_file():
                    report.partials += _remove(path, size, report)
            elif _is_leftover(path.name) and age > LEFTOVER_AGE_SECONDS:
                report.leftovers += _remove(path, size, report)
        for folder in model_folders(store.primary.manifests):
            for path, mtime, size in _files(folder):
                if path.name.startswith(".") and path.name.endswith(".tmp") and (
                        now - mtime > LEFTOVER_AGE_SECONDS):
                    report.leftovers += _remove(path, size, report)
    if report.layers or report.partials or report.leftovers:
        log.info("store tidied: %s", report)
    return report


def _remove(path: Path, size: int, report: PruneReport) -> int:
    """1 if ``path`` was removed (its size added to the report), 0 if it could not be."""
    try:
        path.unlink()
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc.strerror)
        return 0
    report.bytes_freed += size
    return 1
