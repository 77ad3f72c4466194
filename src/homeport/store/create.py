"""Creating a model from an uploaded GGUF blob or an existing model, with Modelfile settings.

What ``POST /api/create`` does (Ollama's newer API: ``from`` or ``files``, plus ``template``,
``system``, ``parameters``, ``license``, ``messages`` and ``draft_files``). The model file and the
draft's are validated as GGUFs (the draft's vocabulary against the model's) before anything is
written; text layers are stored as blobs; the manifest is written last, atomically,
and layers the replaced manifest used and nothing uses now are removed. Everything here is quick
(no conversion, no quantization), so callers may run it to the end before answering.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from homeport.errors import (
    BadRequestError,
    InvalidModelFileError,
    ModelNotFoundError,
    UnsupportedError,
)
from homeport.store import manifests as mf
from homeport.store.digests import normalize_digest, sha256_bytes
from homeport.store.draft import check_draft
from homeport.store.gguf import GGUFInfo, read_gguf
from homeport.store.names import parse_name
from homeport.store.progress import Progress
from homeport.store.store import MAX_TEXT_LAYER_BYTES, ModelStore, gguf_config

MESSAGE_ROLES = ("system", "user", "assistant", "tool")


@dataclass
class CreateSpec:
    """A create request in store terms; ``None`` means "keep what the base model has"."""

    model: str
    from_: str | None = None
    files: dict[str, str] | None = None
    draft_files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    license: list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[dict[str, Any]] | None = None
    quantize: str | None = None


def _check_file_name(name: str) -> None:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name or "\x00" in name:
        raise BadRequestError("file path must be relative")


def _single_gguf(store: ModelStore, files: dict[str, str], what: str
                 ) -> tuple[str, int, GGUFInfo]:
    """The one GGUF file of ``files`` (name -> uploaded blob digest): digest, size, header."""
    if not files:
        raise BadRequestError(f"no files provided to create the {what} from")
    for file_name in files:
        _check_file_name(file_name)
        if file_name.endswith(".safetensors"):
            raise UnsupportedError(
                "safetensors models need converting to GGUF first "
                "(llama.cpp's convert_hf_to_gguf.py), then create from the .gguf file")
    if len(files) > 1:
        raise UnsupportedError(
            f"only one GGUF file per {what} is supported (not split GGUF files)")
    digest = normalize_digest(next(iter(files.values())))
    path = store.blob_file(digest)
    if path is None:
        raise _blob_not_found(digest)
    return digest, path.stat().st_size, read_gguf(path)


def _model_layer_from_files(store: ModelStore, files: dict[str, str]
                            ) -> tuple[mf.Layer, dict[str, Any], GGUFInfo]:
    digest, size, info = _single_gguf(store, files, "model")
    if info.metadata.get("general.type") == "adapter":
        raise UnsupportedError("this GGUF is an adapter (LoRA); adapters are not supported")
    config = gguf_config(info.architecture, info.parameter_size, info.quantization)
    return mf.Layer(mediaType=mf.MODEL_LAYER, digest=digest, size=size), config, info


def _draft_layer(store: ModelStore, files: dict[str, str], model: GGUFInfo) -> mf.Layer:
    """The draft layer for ``files``, once its GGUF proves a model sharing ``model``'s vocabulary."""
    digest, size, info = _single_gguf(store, files, "draft model")
    check_draft(info, model)
    return mf.Layer(mediaType=mf.DRAFT_LAYER, digest=digest, size=size)


def _blob_not_found(digest: str) -> BadRequestError:
    return BadRequestError(f"blob {digest} not found; upload it first with POST /api/blobs/{digest}")


def _check_text(what: str, text: str) -> bytes:
    data = text.encode()
    if len(data) > MAX_TEXT_LAYER_BYTES:
        raise BadRequestError(f"{what} is too large (limit {MAX_TEXT_LAYER_BYTES} bytes)")
    return data


def check_messages(messages: list[dict[str, Any]]) -> None:
    for message in messages:
        if message.get("role") not in MESSAGE_ROLES:
            raise BadRequestError(
                f"invalid message role {str(message.get('role'))[:40]!r}: expected one of "
                f"{', '.join(MESSAGE_ROLES)}")
        if not isinstance(message.get("content", ""), str):
            raise BadRequestError("a message's content must be a string")


def _text_layers(spec: CreateSpec, base_parameters: dict[str, Any]
                 ) -> dict[str, list[bytes] | None]:
    """The new contents of each text layer type; None keeps the base model's."""
    layers: dict[str, list[bytes] | None] = {}
    if spec.template is not None:
        layers[mf.TEMPLATE_LAYER] = [_check_text("template", spec.template)]
    if spec.system is not None:
        layers[mf.SYSTEM_LAYER] = [_check_text("system", spec.system)]
    if spec.license is not None:
        layers[mf.LICENSE_LAYER] = [_check_text("license", text) for text in spec.license if text]
    if spec.parameters:
        merged = {**base_parameters, **spec.parameters}
        layers[mf.PARAMS_LAYER] = [_check_text("parameters", json.dumps(merged))]
    if spec.messages:
        check_messages(spec.messages)
        layers[mf.MESSAGES_LAYER] = [_check_text("messages", json.dumps(spec.messages))]
    return layers


def create_model(store: ModelStore, spec: CreateSpec) -> Iterator[Progress]:
    """Create ``spec.model``; every check that can fail is made before anything is written."""
    name = parse_name(spec.model)
    if spec.quantize:
        raise UnsupportedError(
            "quantization is not supported by homeport; quantize with llama.cpp's "
            "llama-quantize, then create from the quantized GGUF")
    if spec.adapters:
        raise UnsupportedError("adapters (LoRA) are not supported by homeport")
    base_parameters: dict[str, Any] = {}
    model_gguf: Callable[[], GGUFInfo]  # the model's header, read only if a draft needs it
    if spec.from_:
        base = store.resolve(spec.from_)
        layers = list(base.manifest.layers)
        config = dict(base.config)
        base_parameters = dict(base.parameters)
        model_gguf = lambda: base.gguf  # noqa: E731
    elif spec.files is not None:
        yield Progress("parsing GGUF")
        model_layer, config, info = _model_layer_from_files(store, spec.files)
        layers = [model_layer]
        model_gguf = lambda: info  # noqa: E731
    else:
        raise BadRequestError("neither 'from' or 'files' was specified")
    if not any(layer.media_type == mf.MODEL_LAYER for layer in layers):
        raise InvalidModelFileError("the base model has no model file")
    draft: mf.Layer | None = None
    if spec.draft_files is not None:  # replaces the base model's draft, if it has one
        yield Progress("parsing draft GGUF")
        draft = _draft_layer(store, spec.draft_files, model_gguf())
        layers = [layer for layer in layers if layer.media_type != mf.DRAFT_LAYER] + [draft]
    replacements = _text_layers(spec, base_parameters)
    kept = [layer for layer in layers if layer.media_type not in replacements]
    added = [(mf.Layer(mediaType=media_type, digest=sha256_bytes(data), size=len(data)), data)
             for media_type, texts in replacements.items() for data in texts or []]
    config_bytes = json.dumps(config).encode()
    manifest = mf.Manifest(
        schemaVersion=2, mediaType=mf.MANIFEST_MEDIA_TYPE,
        config=mf.Layer(mediaType=mf.CONFIG_MEDIA_TYPE, digest=sha256_bytes(config_bytes),
                        size=len(config_bytes)),
        layers=kept + [layer for layer, _ in added],
    )
    with store.hold(manifest.digests()):  # from here on, no layer it names can be removed
        for layer in kept:
            if store.blob_file(layer.digest) is None:  # a delete since it was read above
                raise ModelNotFoundError(spec.from_) if spec.from_ and layer is not draft else (
                    _blob_not_found(layer.digest))
            yield Progress(f"using existing layer {layer.digest}")
        for layer, data in added:
            verb = "using existing" if store.has_blob(layer.digest) else "creating new"
            store.write_blob(data)
            yield Progress(f"{verb} layer {layer.digest}")
        store.write_blob(config_bytes)
        yield Progress("writing manifest")
        unused = store.write_manifest(name, manifest.to_bytes())
    if store.remove_layers(unused):
        yield Progress("removing unused layers")
    yield Progress("success")
