"""Ollama manifests (Docker v2 schema 2) and their layer media types."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from homeport.errors import BadRequestError
from homeport.store.digests import normalize_digest

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_PREFIX = "application/vnd.ollama.image."
MODEL_LAYER = LAYER_PREFIX + "model"
TEMPLATE_LAYER = LAYER_PREFIX + "template"
SYSTEM_LAYER = LAYER_PREFIX + "system"
PARAMS_LAYER = LAYER_PREFIX + "params"
LICENSE_LAYER = LAYER_PREFIX + "license"
MESSAGES_LAYER = LAYER_PREFIX + "messages"
ADAPTER_LAYER = LAYER_PREFIX + "adapter"
PROJECTOR_LAYER = LAYER_PREFIX + "projector"
DRAFT_LAYER = LAYER_PREFIX + "draft"  # a smaller GGUF that proposes tokens for the model

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_LAYERS = 256


class Layer(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    media_type: str = Field(alias="mediaType")
    digest: str
    size: int = Field(ge=0)
    from_: str | None = Field(default=None, alias="from")

    @field_validator("digest")
    @classmethod
    def _digest(cls, value: str) -> str:
        return normalize_digest(value)


class Manifest(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    schema_version: int = Field(alias="schemaVersion")
    media_type: str = Field(default=MANIFEST_MEDIA_TYPE, alias="mediaType")
    config: Layer
    layers: list[Layer] = Field(max_length=MAX_LAYERS)

    def layers_of(self, media_type: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.media_type == media_type]

    def layer_of(self, media_type: str) -> Layer | None:
        found = self.layers_of(media_type)
        return found[-1] if found else None

    @property
    def total_size(self) -> int:
        return self.config.size + sum(layer.size for layer in self.layers)

    def digests(self) -> set[str]:
        return {self.config.digest, *(layer.digest for layer in self.layers)}

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(by_alias=True, exclude_none=True)).encode()


class InvalidManifestError(BadRequestError):
    pass


def parse_manifest(data: bytes) -> Manifest:
    """Validate manifest bytes; every digest in it must be ``sha256:<64 hex>``."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise InvalidManifestError("invalid manifest: too large")
    try:
        raw: Any = json.loads(data)
        manifest = Manifest.model_validate(raw)
    except (ValueError, ValidationError) as exc:
        reason = "invalid digest format" if "digest" in str(exc) else "malformed"
        raise InvalidManifestError(f"invalid manifest: {reason}") from None
    if manifest.schema_version != 2:
        raise InvalidManifestError("invalid manifest: unsupported schemaVersion")
    return manifest
