"""Models on disk: names, digests, manifests, blobs, GGUF validation, pull, create, the store."""

from homeport.store.names import ModelName, parse_name
from homeport.store.record import ModelRecord
from homeport.store.store import ModelStore

__all__ = ["ModelName", "ModelRecord", "ModelStore", "parse_name"]
