"""Ollama's ``options`` map: typed, with Ollama's defaults, type errors and precedence.

Precedence: the request's options, then the model's Modelfile parameters, then the defaults below.
Unknown keys are ignored (logged); a known key with the wrong type is a 400 worded as Ollama words
it: ``option "num_ctx" must be of type integer``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from homeport.errors import InvalidOptionError

log = logging.getLogger(__name__)

MIN_CTX = 4


@dataclass(frozen=True)
class ModelOptions:
    # load time: a change reloads the model
    num_ctx: int = 0  # 0: the server default (HOMEPORT_CONTEXT_LENGTH)
    num_batch: int = 512
    num_thread: int = 0
    # per request
    num_keep: int = 4
    num_predict: int = -1
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_last_n: int = 64
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1
    stop: tuple[str, ...] = ()


_INT_FIELDS = {f.name for f in fields(ModelOptions) if f.type in ("int", int)}
_FLOAT_FIELDS = {f.name for f in fields(ModelOptions) if f.type in ("float", float)}
# Accepted for compatibility, with no effect on a CPU llama.cpp engine.
_IGNORED = {
    "num_gpu": "integer", "main_gpu": "integer", "use_mmap": "boolean", "use_mlock": "boolean",
    "numa": "boolean", "low_vram": "boolean", "vocab_only": "boolean", "f16_kv": "boolean",
    "penalize_newline": "boolean", "mirostat": "integer", "mirostat_tau": "number",
    "mirostat_eta": "number", "tfs_z": "number",
}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _convert(key: str, value: Any) -> Any:
    if key in _INT_FIELDS:
        if not _is_number(value):
            raise InvalidOptionError(f'option "{key}" must be of type integer')
        return int(value)
    if key in _FLOAT_FIELDS:
        if not _is_number(value):
            raise InvalidOptionError(f'option "{key}" must be of type number')
        return float(value)
    if key == "stop":
        if isinstance(value, str):
            return (value,) if value else ()
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise InvalidOptionError('option "stop" must be of type array of strings')
        return tuple(item for item in value if item)
    raise AssertionError(key)


def _check_ignored(key: str, value: Any) -> None:
    kind = _IGNORED[key]
    ok = isinstance(value, bool) if kind == "boolean" else _is_number(value)
    if not ok:
        raise InvalidOptionError(f'option "{key}" must be of type {kind}')


def apply_options(base: ModelOptions, options: Mapping[str, Any] | None) -> ModelOptions:
    """``base`` with ``options`` laid over it; raises InvalidOptionError on a wrong type."""
    if not options:
        return base
    if not isinstance(options, Mapping):
        raise InvalidOptionError("options must be an object")
    changes: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        if key in _INT_FIELDS or key in _FLOAT_FIELDS or key == "stop":
            changes[key] = _convert(key, value)
        elif key in _IGNORED:
            _check_ignored(key, value)
        else:
            log.info("ignoring unknown option %r", key)
    return replace(base, **changes)


def resolve_options(
    model_parameters: Mapping[str, Any],
    request_options: Mapping[str, Any] | None,
    default_num_ctx: int,
    model_context_length: int,
    max_num_ctx: int | None = None,
) -> ModelOptions:
    """Defaults ← Modelfile parameters ← request options, with num_ctx filled in and clamped (to
    the model's context length and ``max_num_ctx``, the caller's limit)."""
    options = apply_options(apply_options(ModelOptions(), model_parameters), request_options)
    num_ctx = options.num_ctx if options.num_ctx > 0 else default_num_ctx
    if max_num_ctx is not None:
        num_ctx = min(num_ctx, max_num_ctx)
    num_ctx = max(MIN_CTX, min(num_ctx, model_context_length))
    return replace(options, num_ctx=num_ctx, num_batch=max(32, min(options.num_batch, 2048)))
