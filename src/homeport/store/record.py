"""A model as the rest of homeport sees it: ``ModelRecord``, built by the store from a manifest.

The chat template the engine renders is Jinja. A GGUF carries one (``tokenizer.chat_template``);
Ollama's template layers are Go ``text/template``, which homeport shows but does not execute. A
model created with a Jinja TEMPLATE gets that template instead of its file's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from homeport.store import manifests as mf
from homeport.store.gguf import GGUFInfo, read_gguf
from homeport.store.names import ModelName

# A Go template action starts with a field (.Prompt), a variable ($x) or a keyword; Jinja's do not.
_GO_ACTION = re.compile(
    r"\{\{-?\s*(?:\.|\$|(?:if|range|with|end|else|template|define|block)\b)")


def is_jinja_template(text: str) -> bool:
    """True for a Jinja chat template, False for an Ollama (Go text/template) one."""
    if "{%" in text or "{#" in text:
        return True
    return "{{" in text and _GO_ACTION.search(text) is None


@dataclass
class ModelRecord:
    """A model: its name, files and Modelfile settings."""

    name: ModelName
    manifest: mf.Manifest
    manifest_digest: str
    modified_at: datetime
    model_path: Path
    # The draft model's GGUF (the blob of the manifest's draft layer) for speculative decoding;
    # None when the model has no draft.
    draft_path: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    license: list[str] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    read_only: bool = False

    @property
    def size(self) -> int:
        return self.manifest.total_size

    @property
    def model_digest(self) -> str:
        layer = self.manifest.layer_of(mf.MODEL_LAYER)
        return layer.digest if layer else ""

    @cached_property
    def gguf(self) -> GGUFInfo:
        return read_gguf(self.model_path)

    @property
    def chat_template(self) -> str | None:
        """The Jinja template to render chats with: the model's own TEMPLATE if it is Jinja,
        else the GGUF's."""
        if self.template and is_jinja_template(self.template):
            return self.template
        return self.gguf.chat_template

    @property
    def family(self) -> str:
        family = self.config.get("model_family")
        return family if isinstance(family, str) and family else self.gguf.architecture

    @property
    def families(self) -> list[str]:
        families = self.config.get("model_families")
        if isinstance(families, list) and families and all(isinstance(f, str) for f in families):
            return list(families)
        return [self.family]

    @property
    def parameter_size(self) -> str:
        value = self.config.get("model_type")
        return value if isinstance(value, str) and value else self.gguf.parameter_size

    @property
    def quantization_level(self) -> str:
        value = self.config.get("file_type")
        return value if isinstance(value, str) and value else self.gguf.quantization
