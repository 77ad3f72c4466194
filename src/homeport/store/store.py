"""The model store, in Ollama's layout: ``manifests/{host}/{namespace}/{model}/{tag}`` and
``blobs/sha256-<hex>``.

One writable root (``HOMEPORT_MODELS``, ``OLLAMA_MODELS``, or ``<data dir>/models``) and any number of
read-only roots (existing Ollama stores) whose models are served in place. The bundled model's
manifest lives in the writable root; its model layer resolves to the file inside the installed
package. Only this package knows about paths; callers get ``ModelRecord``s.

Changes follow one rule: blobs first, manifest last (atomically), then the layers the old manifest
used and no other manifest (nor a pull or create in progress) still needs are removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from homeport.errors import BadRequestError, InvalidModelFileError, ModelNotFoundError, StorageError
from homeport.fileio import atomic_write
from homeport.store import manifests as mf
from homeport.store.bundled import BundledModel
from homeport.store.digests import blob_path, normalize_digest, sha256_bytes
from homeport.store.download import Downloads
from homeport.store.gguf import read_gguf
from homeport.store.names import ModelName, parse_name
from homeport.store.record import ModelRecord

log = logging.getLogger(__name__)

MAX_TEXT_LAYER_BYTES = 1024 * 1024


@dataclass(frozen=True)
class StoreRoot:
    path: Path
    writable: bool

    @property
    def manifests(self) -> Path:
        return self.path / "manifests"

    @property
    def blobs(self) -> Path:
        return self.path / "blobs"


class UnreadableManifestError(Exception):
    pass


class ModelStore:
    """Lists, resolves, copies and deletes models across the writable and read-only roots."""

    def __init__(
        self,
        root: Path,
        extra_roots: Sequence[Path] = (),
        bundled: Sequence[BundledModel] = (),
    ) -> None:
        self.primary = StoreRoot(root, writable=True)
        self.roots = [self.primary] + [
            StoreRoot(path, writable=False) for path in extra_roots
            if path.resolve() != root.resolve() and path.is_dir()
        ]
        self.bundled = tuple(bundled)
        self.downloads = Downloads()
        self._lock = threading.RLock()
        self._held: Counter[str] = Counter()

    # --- blobs ---------------------------------------------------------------------------------

    @property
    def blobs_dir(self) -> Path:
        """The writable root's blob folder, created on first use."""
        self.primary.blobs.mkdir(parents=True, exist_ok=True)
        return self.primary.blobs

    def blob_file(self, digest: str) -> Path | None:
        """The file holding ``digest`` in any root (or the bundled package), if present."""
        digest = normalize_digest(digest)
        for root in self.roots:
            path = blob_path(root.blobs, digest)
            if path.is_file():
                return path
        for model in self.bundled:
            if model.digest == digest:
                return model.path
        return None

    def has_blob(self, digest: str) -> bool:
        """Whether the writable root holds ``digest`` (what pulls and uploads fill)."""
        return blob_path(self.primary.blobs, digest).is_file()

    def write_blob(self, data: bytes) -> str:
        """Store small bytes (a config, template or params layer) and return their digest."""
        digest = sha256_bytes(data)
        path = blob_path(self.primary.blobs, digest)
        if not path.exists():
            try:
                atomic_write(path, data)
            except OSError as exc:
                raise StorageError.wrap("write a layer", exc) from None
        return digest

    def read_text_layer(self, digest: str, limit: int = MAX_TEXT_LAYER_BYTES) -> bytes:
        path = self.blob_file(digest)
        if path is None:
            raise InvalidModelFileError(f"model layer {digest} is missing from the store")
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise InvalidModelFileError(f"model layer {digest} is too large to be text")
        return data

    @contextlib.contextmanager
    def hold(self, digests: Iterable[str]) -> Iterator[None]:
        """Keep ``digests`` from being removed while a pull or create that needs them runs."""
        held = [normalize_digest(digest) for digest in digests]
        with self._lock:
            self._held.update(held)
        try:
            yield
        finally:
            with self._lock:
                self._held -= Counter(held)  # and drops the digests no one holds now

    # --- manifests -----------------------------------------------------------------------------

    def _iter_manifests(self, roots: Sequence[StoreRoot] | None = None,
                        ) -> Iterator[tuple[ModelName, Path, StoreRoot]]:
        """Every manifest in ``roots`` (default: all of them, writable root first)."""
        for root in self.roots if roots is None else roots:
            for model in model_folders(root.manifests):
                namespace = model.parent
                for tag in sorted(model.iterdir()):
                    if not tag.is_file() or tag.name.startswith("."):
                        continue
                    text = f"{namespace.parent.name}/{namespace.name}/{model.name}:{tag.name}"
                    try:
                        yield parse_name(text), tag, root
                    except BadRequestError:
                        log.debug("skipping a manifest with an invalid name: %s", text)

    def _locate(self, name: ModelName, writable_only: bool = False,
                ) -> tuple[ModelName, Path, StoreRoot] | None:
        """The stored name (its own spelling), manifest file and root for ``name``."""
        roots = [self.primary] if writable_only else self.roots
        for root in roots:
            exact = root.manifests.joinpath(*name.manifest_parts)
            if exact.is_file():
                return name, exact, root
        for found, path, root in self._iter_manifests(roots):
            if found.key() == name.key():
                return found, path, root
        return None

    def _record(self, name: ModelName, path: Path, root: StoreRoot) -> ModelRecord:
        data = path.read_bytes()
        manifest = mf.parse_manifest(data)
        model_layer = manifest.layer_of(mf.MODEL_LAYER)
        model_path = self.blob_file(model_layer.digest) if model_layer else None
        if model_path is None:
            raise InvalidModelFileError(f"model '{name.display}' has no model file in the store")
        draft_path: Path | None = None
        if draft_layer := manifest.layer_of(mf.DRAFT_LAYER):
            draft_path = self.blob_file(draft_layer.digest)
            if draft_path is None:
                raise InvalidModelFileError(
                    f"model '{name.display}' has no draft model file in the store")
        record = ModelRecord(
            name=name,
            manifest=manifest,
            manifest_digest=sha256_bytes(data).removeprefix("sha256:"),
            modified_at=datetime.fromtimestamp(path.stat().st_mtime, UTC),
            model_path=model_path,
            draft_path=draft_path,
            read_only=not root.writable,
        )
        try:
            config = json.loads(self.read_text_layer(manifest.config.digest))
            record.config = config if isinstance(config, dict) else {}
        except (InvalidModelFileError, ValueError):
            record.config = {}
        if layer := manifest.layer_of(mf.TEMPLATE_LAYER):
            record.template = self.read_text_layer(layer.digest).decode("utf-8", "replace")
        if layer := manifest.layer_of(mf.SYSTEM_LAYER):
            record.system = self.read_text_layer(layer.digest).decode("utf-8", "replace")
        if layer := manifest.layer_of(mf.PARAMS_LAYER):
            params = json.loads(self.read_text_layer(layer.digest) or b"{}")
            record.parameters = params if isinstance(params, dict) else {}
        record.license = [
            self.read_text_layer(layer.digest).decode("utf-8", "replace")
            for layer in manifest.layers_of(mf.LICENSE_LAYER)
        ]
        if layer := manifest.layer_of(mf.MESSAGES_LAYER):
            messages = json.loads(self.read_text_layer(layer.digest) or b"[]")
            record.messages = messages if isinstance(messages, list) else []
        return record

    def resolve(self, text: str) -> ModelRecord:
        """The model called ``text`` (case-insensitive); InvalidModelName or ModelNotFound."""
        name = parse_name(text)
        with self._lock:
            located = self._locate(name)
            if located is None:
                raise ModelNotFoundError(text)
            return self._record(*located)

    def list_models(self) -> list[ModelRecord]:
        """Every usable model, writable root first; a name shadowed by an earlier root is skipped."""
        seen: set[tuple[str, str, str, str]] = set()
        records = []
        with self._lock:
            for name, path, root in self._iter_manifests():
                if name.key() in seen:
                    continue
                seen.add(name.key())
                try:
                    records.append(self._record(name, path, root))
                except (BadRequestError, OSError, ValueError) as exc:
                    log.warning("skipping model %s: %s", name.display, exc)
        return records

    def stored_name(self, name: ModelName) -> ModelName:
        """``name`` as the writable root already spells it (lookups ignore case), else itself."""
        with self._lock:
            located = self._locate(name, writable_only=True)
        return located[0] if located else name

    # --- changes -------------------------------------------------------------------------------

    def write_manifest(self, name: ModelName, manifest_bytes: bytes) -> set[str]:
        """Write a manifest atomically into the writable root (the last step of any change), over
        the one stored under any spelling of ``name`` (lookups ignore case), else as spelled.

        Returns the digests the manifest it replaced used and this one does not: candidates for
        ``remove_layers``.
        """
        new = mf.parse_manifest(manifest_bytes).digests()
        with self._lock:  # one lookup and write at a time: "Foo" and "foo" never make two
            located = self._locate(name, writable_only=True)
            path = located[1] if located else self.primary.manifests.joinpath(*name.manifest_parts)
            old: set[str] = set()
            if path.is_file():
                try:
                    old = mf.parse_manifest(path.read_bytes()).digests()
                except BadRequestError:
                    log.warning("replacing an unreadable manifest for %s", name.display)
            try:
                atomic_write(path, manifest_bytes)
            except OSError as exc:
                raise StorageError.wrap("write the manifest", exc) from None
        return old - new

    def copy(self, source: str, destination: str) -> None:
        src = parse_name(source)
        dst = parse_name(destination)
        with self._lock:
            located = self._locate(src)
            if located is None:
                raise ModelNotFoundError(source, hint="")
            self.remove_layers(self.write_manifest(dst, located[1].read_bytes()))

    def delete(self, text: str) -> None:
        """Remove a model's manifest and every layer of it no other manifest still uses."""
        name = parse_name(text)
        with self._lock:
            located = self._locate(name)
            if located is None:
                raise ModelNotFoundError(text, hint="")
            _, path, root = located
            if not root.writable:
                raise BadRequestError(
                    f"model '{name.display}' belongs to another Ollama store, which homeport "
                    "only reads; remove it with ollama rm")
            try:
                digests = mf.parse_manifest(path.read_bytes()).digests()
            except BadRequestError:
                digests = set()
            path.unlink()
            _prune_empty_dirs(path.parent, self.primary.manifests)
            self.remove_layers(digests)

    def used_digests(self) -> set[str]:
        """Every digest a manifest in the writable root uses. Every file under ``manifests/``
        counts, whatever its name (Ollama may have written names homeport would refuse). A
        manifest or folder that cannot be read raises UnreadableManifestError: then no layer may
        be called unused."""
        used: set[str] = set()

        def unreadable(error: OSError) -> None:
            raise UnreadableManifestError(f"{error.filename} cannot be read: {error.strerror}")

        for folder, _, files in os.walk(self.primary.manifests, onerror=unreadable):
            for file in files:
                if file.startswith("."):  # a write in progress, or its leftover
                    continue
                path = Path(folder) / file
                try:
                    used |= mf.parse_manifest(path.read_bytes()).digests()
                except (BadRequestError, OSError) as exc:
                    raise UnreadableManifestError(
                        f"the manifest {path} cannot be read: {exc}") from None
        return used

    def held_digests(self) -> set[str]:
        """The digests a pull or create in progress holds (see ``hold``)."""
        with self._lock:
            return set(self._held)

    @contextlib.contextmanager
    def changes(self) -> Iterator[None]:
        """Hold off every other change to the store (lookups, writes, removals) meanwhile."""
        with self._lock:
            yield

    def remove_layers(self, candidates: Iterable[str]) -> list[str]:
        """Delete the blobs among ``candidates`` that no manifest uses and no pull or create holds."""
        removed: list[str] = []
        with self._lock:
            wanted = set(candidates) - set(self._held)
            if not wanted:
                return removed
            try:
                used = self.used_digests()
            except UnreadableManifestError as exc:
                log.warning("unused layers kept: %s", exc)
                return removed
            for digest in sorted(wanted - used):
                path = blob_path(self.primary.blobs, digest)
                if path.is_file():
                    path.unlink()
                    removed.append(digest)
        if removed:
            log.info("removed %d unused layer(s)", len(removed))
        return removed

    def ensure_bundled(self) -> None:
        """Record each bundled model's manifest in the writable root if it is not there."""
        for model in self.bundled:
            self._ensure_bundled(model)

    def _ensure_bundled(self, model: BundledModel) -> None:
        name = parse_name(model.name)
        with self._lock:
            if self._locate(name, writable_only=True) is not None:  # in any spelling: kept as is
                return
            info = read_gguf(model.path)
            config = json.dumps(gguf_config(info.architecture, info.parameter_size,
                                            info.quantization)).encode()
            config_digest = self.write_blob(config)
            manifest = mf.Manifest(
                schemaVersion=2,
                mediaType=mf.MANIFEST_MEDIA_TYPE,
                config=mf.Layer(mediaType=mf.CONFIG_MEDIA_TYPE, digest=config_digest,
                                size=len(config)),
                layers=[mf.Layer(mediaType=mf.MODEL_LAYER, digest=model.digest,
                                 size=model.size)],
            )
            self.write_manifest(name, manifest.to_bytes())


def gguf_config(architecture: str, parameter_size: str, quantization: str) -> dict[str, object]:
    """The config blob Ollama writes for a GGUF model."""
    return {
        "model_format": "gguf",
        "model_family": architecture,
        "model_families": [architecture],
        "model_type": parameter_size,
        "file_type": quantization,
    }


def _subdirs(path: Path) -> list[Path]:
    if not path.is_dir():
        return []
    return sorted(child for child in path.iterdir() if child.is_dir())


def model_folders(manifests: Path) -> Iterator[Path]:
    """``manifests/{host}/{namespace}/{model}``: the folders that hold a model's tags."""
    for host in _subdirs(manifests):
        for namespace in _subdirs(host):
            yield from _subdirs(namespace)


def _prune_empty_dirs(start: Path, stop: Path) -> None:
    current = start
    while current != stop and stop in current.parents:
        try:
            current.rmdir()
        except OSError:
            return
        current = current.parent


def open_store(with_bundled: bool = True) -> ModelStore:
    """The store the settings describe, with the bundled model recorded in it (unless a gateway
    node, which serves no models itself, says not to)."""
    from homeport import config
    from homeport.store.bundled import bundled_models

    bundled = bundled_models(config.BUNDLED_MODELS.get(), config.data_dir() / "cache")
    store = ModelStore(config.models_dir(), config.extra_store_dirs(), bundled)
    if with_bundled:
        store.ensure_bundled()
    return store
