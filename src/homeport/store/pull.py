"""Pulling a model from a registry into the store, reporting progress as Ollama does.

The order is what keeps the store whole: the manifest is fetched and checked (every digest
``sha256:<64 hex>``, no config sharing a digest with a layer, small layers small, a model layer
present, at most one draft layer); each layer is downloaded and verified (``download``); the model
file is validated as a GGUF, and so is a draft model's, whose vocabulary must be the model's; only
then is the manifest written, atomically; last, layers the replaced manifest used and nothing uses
now are removed. A pull cut off anywhere before the manifest leaves no visible model.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

from homeport.errors import InvalidModelFileError, RegistryRefusedError
from homeport.store import manifests as mf
from homeport.store.digests import sha256_bytes, short_digest
from homeport.store.download import DownloadSettings
from homeport.store.draft import check_draft
from homeport.store.gguf import read_gguf
from homeport.store.names import parse_name
from homeport.store.progress import Progress
from homeport.store.registry import RegistryClient
from homeport.store.store import MAX_TEXT_LAYER_BYTES, ModelStore

# Layers whose bytes may be large; every other layer is text or JSON and is kept small.
_LARGE_LAYERS = {mf.MODEL_LAYER, mf.ADAPTER_LAYER, mf.PROJECTOR_LAYER, mf.DRAFT_LAYER}
_KNOWN_LAYERS = _LARGE_LAYERS | {mf.TEMPLATE_LAYER, mf.SYSTEM_LAYER, mf.PARAMS_LAYER,
                                 mf.LICENSE_LAYER, mf.MESSAGES_LAYER}


def check_pulled_manifest(data: bytes) -> mf.Manifest:
    """Parse a registry's manifest and refuse what homeport cannot store or run safely."""
    manifest = mf.parse_manifest(data)
    if manifest.config.digest in {layer.digest for layer in manifest.layers}:
        raise RegistryRefusedError("invalid manifest: the config and a layer share one digest")
    if manifest.config.size > MAX_TEXT_LAYER_BYTES:
        raise RegistryRefusedError(
            f"invalid manifest: its config claims {manifest.config.size} bytes")
    models = manifest.layers_of(mf.MODEL_LAYER)
    if not models:
        raise RegistryRefusedError(
            "the manifest has no GGUF model layer; homeport runs GGUF models only")
    if len(models) > 1:
        raise RegistryRefusedError("models split into several GGUF layers are not supported")
    if len(manifest.layers_of(mf.DRAFT_LAYER)) > 1:
        raise RegistryRefusedError("draft models split into several GGUF layers are not supported")
    for layer in manifest.layers:
        if layer.media_type not in _KNOWN_LAYERS:
            raise RegistryRefusedError(f"unsupported layer type {layer.media_type[:100]!r}")
        if layer.media_type not in _LARGE_LAYERS and layer.size > MAX_TEXT_LAYER_BYTES:
            raise RegistryRefusedError(
                f"invalid manifest: its {layer.media_type.removeprefix(mf.LAYER_PREFIX)} layer "
                f"claims {layer.size} bytes")
    return manifest


def _unique_layers(manifest: mf.Manifest) -> list[mf.Layer]:
    seen: set[str] = set()
    layers = []
    for layer in [*manifest.layers, manifest.config]:
        if layer.digest not in seen:
            seen.add(layer.digest)
            layers.append(layer)
    return layers


async def _pull_layer(store: ModelStore, registry: RegistryClient, layer: mf.Layer,
                      settings: DownloadSettings) -> AsyncIterator[Progress]:
    status = f"pulling {short_digest(layer.digest)}"
    if store.has_blob(layer.digest):
        yield Progress(status, layer.digest, layer.size, layer.size)
        return
    if layer.size == 0:  # nothing to fetch (and a Range request for it would be refused)
        if layer.digest != sha256_bytes(b""):
            raise RegistryRefusedError(f"layer {short_digest(layer.digest)} claims 0 bytes")
        store.write_blob(b"")
        yield Progress(status, layer.digest)
        return
    last = -1
    async for completed in store.downloads.follow(store.blobs_dir, layer.digest, layer.size,
                                                  registry, settings):
        if completed != last:
            last = completed
            yield Progress(status, layer.digest, layer.size, completed)


def _validate_model_file(store: ModelStore, manifest: mf.Manifest) -> None:
    """The model file, and the draft model's if there is one, are GGUFs homeport can load."""
    layer = manifest.layer_of(mf.MODEL_LAYER)
    path = store.blob_file(layer.digest) if layer else None
    if path is None:
        raise InvalidModelFileError("the pulled model file is missing from the store")
    model = read_gguf(path)
    if draft := manifest.layer_of(mf.DRAFT_LAYER):
        draft_path = store.blob_file(draft.digest)
        if draft_path is None:
            raise InvalidModelFileError("the pulled draft model file is missing from the store")
        check_draft(read_gguf(draft_path), model)


async def pull_model(store: ModelStore, text: str, *, insecure: bool,
                     settings: DownloadSettings) -> AsyncGenerator[Progress, None]:
    """Pull ``text`` (a model name) into ``store``; raises HomeportErrors, never leaves half a
    model. The first line comes before any network traffic, so a caller can check the name."""
    name = store.stored_name(parse_name(text))
    if name.scheme == "http" and not insecure:
        raise RegistryRefusedError("insecure protocol http: pull with insecure to use plain http")
    yield Progress("pulling manifest")
    async with RegistryClient(name, insecure, settings.connections) as registry:
        data = await registry.manifest()
        manifest = check_pulled_manifest(data)
        try:
            with store.hold(manifest.digests()):
                for layer in _unique_layers(manifest):
                    async for progress in _pull_layer(store, registry, layer, settings):
                        yield progress
                yield Progress("verifying sha256 digest")
                await asyncio.to_thread(_validate_model_file, store, manifest)
                yield Progress("writing manifest")
                unused = store.write_manifest(name, data)
        except InvalidModelFileError:
            store.remove_layers(manifest.digests())  # verified, but no use to anyone
            raise
    if store.remove_layers(unused):
        yield Progress("removing unused layers")
    yield Progress("success")
