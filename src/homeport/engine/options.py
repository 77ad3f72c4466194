"""Ollama's ``options`` map: typed, with Ollama's defaults, type errors, precedence and bounds.

Precedence: the request's options, then the model's Modelfile parameters, then the defaults below.
Unknown keys are ignored (logged); a known key with the wrong type is a 400 worded as Ollama words
it: ``option "num_ctx" must be of type integer``.

Every number is bounded before llama.cpp sees it (a thread count of 2**31-1 ends the process in
``std::bad_alloc``; a ``repeat_last_n`` of 2**27 costs half a GiB per slot). A non-finite number
(NaN, ±Infinity, or an integer past 1e308 sent as ``1e400``) is a 400. A finite one past the end
of its option's range is clamped to it, as Ollama's runner clamps ``num_ctx`` to the model's
context: the request still means something sensible. The one exception is ``repeat_penalty`` of
zero or less, which has no nearest sensible value (llama.cpp divides by it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from homeport.engine.drafting import DRAFT_MAX
from homeport.errors import InvalidOptionError

log = logging.getLogger(__name__)

MIN_CTX = 4
INT32_MAX = 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38  # past this a float becomes inf on its way into llama.cpp
NUM_BATCH_RANGE = (32, 2048)


@dataclass(frozen=True)
class ModelOptions:
    # load time: a change reloads the model
    num_ctx: int = 0  # 0: the server default (HOMEPORT_CONTEXT_LENGTH, else chosen by memory)
    num_batch: int = 512
    num_thread: int = 0  # 0: one per core
    num_gpu: int = -1  # layers on GPUs: -1 as many as fit, 0 none (engine.placement)
    # per request
    num_keep: int = 4
    num_predict: int = -1
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_last_n: int = 64  # -1: the whole context
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1
    stop: tuple[str, ...] = ()
    draft_num_predict: int = -1  # the most tokens drafted per step; 0: none; -1: as fits


_INT_FIELDS = {f.name for f in fields(ModelOptions) if f.type in ("int", int)}
_FLOAT_FIELDS = {f.name for f in fields(ModelOptions) if f.type in ("float", float)}
# Accepted for compatibility, with no effect.
_IGNORED = {
    "main_gpu": "integer", "use_mmap": "boolean", "use_mlock": "boolean",
    "numa": "boolean", "low_vram": "boolean", "vocab_only": "boolean", "f16_kv": "boolean",
    "penalize_newline": "boolean", "mirostat": "integer", "mirostat_tau": "number",
    "mirostat_eta": "number", "tfs_z": "number",
}
# Float options with a natural range; the others are held to what a C float can carry.
_FLOAT_RANGES = {"temperature": (0.0, FLOAT32_MAX), "top_p": (0.0, 1.0), "min_p": (0.0, 1.0),
                 "typical_p": (0.0, 1.0)}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_finite(key: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidOptionError(f'option "{key}" must be a finite number, not {value}')


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(value, high))


def _convert(key: str, value: Any) -> Any:
    if key in _INT_FIELDS:
        if not _is_number(value):
            raise InvalidOptionError(f'option "{key}" must be of type integer')
        # Python ints are unbounded: hold them to 32 bits here, the precise range comes later.
        return _clamp(int(value), -INT32_MAX, INT32_MAX) if key != "seed" else int(value)
    if key in _FLOAT_FIELDS:
        if not _is_number(value):
            raise InvalidOptionError(f'option "{key}" must be of type number')
        try:
            number = float(value)
        except OverflowError:  # an integer of more than 308 digits
            raise InvalidOptionError(f'option "{key}" must be a finite number') from None
        low, high = _FLOAT_RANGES.get(key, (-FLOAT32_MAX, FLOAT32_MAX))
        return max(low, min(number, high))
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
    """``base`` with ``options`` laid over it; raises InvalidOptionError on a wrong type or a
    number that is not finite (under any key, so none is ever stored)."""
    if not options:
        return base
    if not isinstance(options, Mapping):
        raise InvalidOptionError("options must be an object")
    changes: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        _check_finite(key, value)
        if key in _INT_FIELDS or key in _FLOAT_FIELDS or key == "stop":
            changes[key] = _convert(key, value)
        elif key in _IGNORED:
            _check_ignored(key, value)
        else:
            log.info("ignoring unknown option %r", key)
    if changes.get("repeat_penalty", 1.0) <= 0:
        raise InvalidOptionError('option "repeat_penalty" must be greater than 0 (1 is none)')
    return replace(base, **changes)


def resolve_options(
    model_parameters: Mapping[str, Any],
    request_options: Mapping[str, Any] | None,
    default_num_ctx: int,
    model_context_length: int,
    max_num_ctx: int | None = None,
    max_threads: int = INT32_MAX,
    model_layers: int = INT32_MAX,
) -> ModelOptions:
    """Defaults ← Modelfile parameters ← request options, with num_ctx filled in, and every number
    held to what the model (``model_context_length``, ``model_layers`` as num_gpu counts them),
    the caller (``max_num_ctx``) and the machine (``max_threads``) allow."""
    options = apply_options(apply_options(ModelOptions(), model_parameters), request_options)
    num_ctx = options.num_ctx if options.num_ctx > 0 else default_num_ctx
    if max_num_ctx is not None:
        num_ctx = min(num_ctx, max_num_ctx)
    num_ctx = _clamp(num_ctx, MIN_CTX, max(model_context_length, MIN_CTX))
    repeat_last_n = num_ctx if options.repeat_last_n == -1 else options.repeat_last_n
    return replace(
        options,
        num_ctx=num_ctx,
        num_batch=_clamp(options.num_batch, *NUM_BATCH_RANGE),
        num_thread=_clamp(options.num_thread, 0, max_threads),
        num_gpu=_clamp(options.num_gpu, -1, model_layers),  # any negative: automatic
        num_keep=_clamp(options.num_keep, -1, num_ctx),
        num_predict=max(options.num_predict, -1),
        top_k=max(options.top_k, 0),  # 0: off; llama.cpp takes the least of k and the vocabulary
        repeat_last_n=_clamp(repeat_last_n, 0, num_ctx),
        draft_num_predict=_clamp(options.draft_num_predict, -1, DRAFT_MAX),
        seed=options.seed % 2**32 if options.seed >= 0 else -1,  # llama.cpp's seed is 32 bits
    )
