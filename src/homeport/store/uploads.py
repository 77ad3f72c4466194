"""Receiving a blob a client uploads (``POST /api/blobs/:digest``) for a later create.

The bytes are written to a temporary file beside the blobs (``sha256-<hex>.upload-…``) and hashed
as they arrive; only bytes whose sha256 equals the digest in the URL are renamed into place. A
blob the store already has is read and dropped, whatever the free space; any other upload can be
no larger than the free disk space (less a reserve). A client that goes away leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from homeport.errors import BadRequestError, InsufficientStorageError, StorageError
from homeport.store.digests import blob_path, normalize_digest, short_digest, upload_prefix
from homeport.store.download import DISK_RESERVE_BYTES, check_disk_space
from homeport.store.store import ModelStore


async def receive_blob(store: ModelStore, digest: str, chunks: AsyncIterator[bytes],
                       declared_size: int | None) -> bool:
    """Store the uploaded bytes as ``digest``; False when the blob was already there."""
    digest = normalize_digest(digest)
    if store.has_blob(digest):
        async for _ in chunks:  # let the client finish sending (bytes that need no disk space)
            pass
        return False
    blobs = store.blobs_dir
    what = f"blob {short_digest(digest)}"
    if declared_size is not None:
        check_disk_space(blobs, declared_size, what)
    limit = shutil.disk_usage(blobs).free - DISK_RESERVE_BYTES
    fd, temporary = tempfile.mkstemp(dir=blobs, prefix=upload_prefix(digest))
    try:
        hasher = hashlib.sha256()
        received = 0
        with os.fdopen(fd, "wb") as handle:
            async for chunk in chunks:
                received += len(chunk)
                if received > limit:
                    raise InsufficientStorageError(f"not enough disk space for {what}")
                hasher.update(chunk)
                handle.write(chunk)
            handle.flush()
            # Off the event loop: syncing a multi-GB blob to disk takes seconds.
            await asyncio.to_thread(os.fsync, handle.fileno())
        actual = f"sha256:{hasher.hexdigest()}"
        if actual != digest:
            raise BadRequestError(
                f"digest mismatch: the uploaded bytes hash to {actual}, not {digest}")
        os.replace(temporary, blob_path(blobs, digest))
        return True
    except OSError as exc:
        raise StorageError.wrap("store the uploaded blob", exc) from None
    finally:
        Path(temporary).unlink(missing_ok=True)
