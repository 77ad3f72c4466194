"""Models on disk: names, digests, manifests, blobs, GGUF validation, the store."""

from homeport.store.names import ModelName, parse_name
from homeport.store.store import ModelRecord, ModelStore

__all__ = ["ModelName", "ModelRecord", "ModelStore", "parse_name"]
