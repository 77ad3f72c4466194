"""The one place a blob digest becomes a path.

Only ``sha256:<64 hex>`` (or Ollama's on-disk ``sha256-<64 hex>``) is accepted: anything else, such
as ``sha256:../../etc/passwd`` from a rogue registry, is refused before it can name a file (the
"Probllama" CVE-2024-37032 class). Every read, write and delete of a blob, and of the partial and
upload files a blob grows in, goes through the functions here, which all start from
``blob_filename``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from homeport.errors import BadRequestError

_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
PARTIAL_SUFFIX = ".partial"
PARTIAL_STATE_SUFFIX = ".partial.json"
UPLOAD_MARKER = ".upload-"


class InvalidDigestError(BadRequestError):
    def __init__(self) -> None:
        super().__init__("invalid digest format: expected sha256:<64 hex digits>")


def normalize_digest(digest: str) -> str:
    """``sha256:<hex>`` in lower case, or InvalidDigestError."""
    match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if match is None:
        raise InvalidDigestError()
    return f"sha256:{match.group(1).lower()}"


def blob_filename(digest: str) -> str:
    return normalize_digest(digest).replace(":", "-")


def blob_path(blobs_dir: Path, digest: str) -> Path:
    """The file for ``digest`` inside ``blobs_dir``; raises on any digest that is not sha256 hex."""
    return blobs_dir / blob_filename(digest)


def partial_path(blobs_dir: Path, digest: str) -> Path:
    """Where a pull writes ``digest`` until every byte is there and verified."""
    return blobs_dir / (blob_filename(digest) + PARTIAL_SUFFIX)


def partial_state_path(blobs_dir: Path, digest: str) -> Path:
    """The record of which parts of a partial download are done, for resuming."""
    return blobs_dir / (blob_filename(digest) + PARTIAL_STATE_SUFFIX)


def upload_prefix(digest: str) -> str:
    """The name prefix of a temporary file an upload of ``digest`` is written to."""
    return blob_filename(digest) + UPLOAD_MARKER


def short_digest(digest: str) -> str:
    """The twelve hex digits Ollama shows: ``sha256:8eeb52dfb3bb…`` → ``8eeb52dfb3bb``."""
    return normalize_digest(digest)[7:19]


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def sha256_bytes(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"
