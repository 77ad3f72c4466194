"""Looking at folders the way the store and security tests need to."""

from __future__ import annotations

import hashlib
from pathlib import Path


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder``: its relative path and the sha256 of its bytes."""
    if not folder.exists():
        return {}
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def blob_names(store: Path) -> set[str]:
    blobs = store / "blobs"
    return {path.name for path in blobs.iterdir()} if blobs.is_dir() else set()


def assert_blobs_are_their_digests(store: Path) -> None:
    """Every finished blob in the store is content-addressed: its name is its bytes' sha256."""
    for path in (store / "blobs").iterdir():
        if path.name.startswith("sha256-") and len(path.name) == 71:
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name[7:], path.name
