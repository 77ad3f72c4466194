"""Model names with Ollama's grammar: ``[scheme://][host/][namespace/]model[:tag]``.

``mistral`` is ``registry.ollama.ai/library/mistral:latest``; ``hf.co/user/repo:Q4_K_M`` is host
``hf.co``, namespace ``user``. Every part starts with a letter, digit or ``_``; only the host may hold
``:``, the namespace no ``.``. A name that fails is an ``InvalidModelNameError``: never a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from homeport.errors import InvalidModelNameError

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
DEFAULT_SCHEME = "https"
_MISSING = "!MISSING!"


@dataclass(frozen=True)
class ModelName:
    """A fully qualified, validated model name."""

    host: str
    namespace: str
    model: str
    tag: str
    scheme: str = DEFAULT_SCHEME

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def display(self) -> str:
        """The shortest form Ollama shows: ``mistral:latest``, ``user/m:tag``, ``hf.co/u/m:tag``."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def repository(self) -> str:
        """``namespace/model``, the path a registry serves it under."""
        return f"{self.namespace}/{self.model}"

    @property
    def manifest_parts(self) -> tuple[str, str, str, str]:
        """The four path parts of its manifest under ``manifests/`` (validated, so safe)."""
        return (self.host, self.namespace, self.model, self.tag)

    def manifest_relpath(self) -> PurePosixPath:
        return PurePosixPath(*self.manifest_parts)

    def key(self) -> tuple[str, str, str, str]:
        """Case-insensitive identity, for local lookups."""
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())


def _cut_last(text: str, sep: str) -> tuple[str, str, bool]:
    index = text.rfind(sep)
    if index < 0:
        return text, "", False
    return text[:index] or _MISSING, text[index + len(sep):] or _MISSING, True


def parse_name(text: str) -> ModelName:
    """Parse and validate a model name, filling Ollama's defaults; raise on anything invalid."""
    if not isinstance(text, str) or not text or len(text) > 600:
        raise InvalidModelNameError()
    host = namespace = tag = ""
    scheme = DEFAULT_SCHEME
    rest = text
    if rest.rfind(":") > rest.rfind("/"):
        rest, tag, _ = _cut_last(rest, ":")
    rest, model, promised = _cut_last(rest, "/")
    if not promised:
        model = rest
    else:
        rest, namespace, promised = _cut_last(rest, "/")
        if not promised:
            namespace = rest
        else:
            scheme_part, sep, host_part = rest.partition("://")
            if sep:
                scheme, host = scheme_part, host_part
            else:
                host = scheme_part
    name = ModelName(
        host=host or DEFAULT_HOST,
        namespace=namespace or DEFAULT_NAMESPACE,
        model=model,
        tag=tag or DEFAULT_TAG,
        scheme=scheme,
    )
    if scheme not in ("http", "https") or not (
        _valid_part(name.host, "host") and _valid_part(name.namespace, "namespace")
        and _valid_part(name.model, "model") and _valid_part(name.tag, "tag")
    ):
        raise InvalidModelNameError()
    return name


def is_valid_name(text: str) -> bool:
    try:
        parse_name(text)
    except InvalidModelNameError:
        return False
    return True


def _valid_part(part: str, kind: str) -> bool:
    limit = 350 if kind == "host" else 80
    if not 1 <= len(part) <= limit or part in (".", ".."):
        return False
    for index, char in enumerate(part):
        alnum = char.isascii() and (char.isalnum() or char == "_")
        if index == 0:
            if not alnum:
                return False
            continue
        if alnum or char == "-":
            continue
        if char == "." and kind != "namespace":
            continue
        if char == ":" and kind == "host":
            continue
        return False
    return True
