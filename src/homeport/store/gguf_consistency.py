"""Hyperparameters that contradict each other or the tensors, refused before llama.cpp sees them.

llama.cpp trusts a model's header: attention heads that do not divide into key/value heads, or
more experts used than there are, end in a GGML_ASSERT that aborts the whole server (every
stream of every model) rather than in an error; so does a norm epsilon that is NaN or negative (a
GGML_ASSERT on the first decode). Everything here is read from the header alone,
so a bad file is a clear 400 at import, create, pull or load. Only what holds for every
architecture llama.cpp knows is checked: values that are absent, or tensors a model does not
have (fused QKV, MLA), are simply not compared.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from homeport.errors import InvalidModelFileError

if TYPE_CHECKING:
    from homeport.store.gguf import TensorInfo

MAX_LAYERS = 512  # llama.cpp's LLAMA_MAX_LAYERS
MAX_EXPERTS = 512  # llama.cpp's LLAMA_MAX_EXPERTS (Qwen3 Next)

_LAYER = re.compile(r"blk\.(\d+)\.")


def _refuse(problem: str) -> InvalidModelFileError:
    return InvalidModelFileError(f"invalid GGUF file: {problem}")


def _count(metadata: Mapping[str, Any], key: str) -> int | None:
    value = metadata.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _per_layer(metadata: Mapping[str, Any], key: str) -> list[int] | None:
    """A count given once for every layer, or as a (kept, short) array of one per layer."""
    value = metadata.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, int) for item in value):
        return value
    return None


def check_consistency(metadata: Mapping[str, Any], tensors: Sequence[TensorInfo]) -> None:
    """Raise InvalidModelFileError naming the first contradiction found."""
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        return
    shapes = {tensor.name: tensor.shape for tensor in tensors}
    _check_layers(metadata, arch, shapes)
    _check_experts(metadata, arch)
    _check_attention(metadata, arch, shapes)
    _check_norm_epsilons(metadata, arch)


def _check_layers(metadata: Mapping[str, Any], arch: str,
                  shapes: Mapping[str, tuple[int, ...]]) -> None:
    blocks = _count(metadata, f"{arch}.block_count")
    if blocks is None:
        return
    if blocks > MAX_LAYERS:
        raise _refuse(f"{arch}.block_count is {blocks}, more than llama.cpp's {MAX_LAYERS}")
    layers = {int(match.group(1)) for name in shapes if (match := _LAYER.match(name))}
    if layers and max(layers) >= blocks:
        raise _refuse(f"tensors of layer {max(layers)} but {arch}.block_count is {blocks}")
    missing = sorted(set(range(blocks)) - layers) if layers else []
    if missing:
        raise _refuse(f"{arch}.block_count is {blocks} but layer {missing[0]} has no tensors")


def _check_experts(metadata: Mapping[str, Any], arch: str) -> None:
    experts = _count(metadata, f"{arch}.expert_count") or 0
    used = _count(metadata, f"{arch}.expert_used_count") or 0
    if experts > MAX_EXPERTS:
        raise _refuse(f"{arch}.expert_count is {experts}, more than llama.cpp's {MAX_EXPERTS}")
    if used > experts:
        raise _refuse(f"{arch}.expert_used_count ({used}) is more than {arch}.expert_count "
                      f"({experts})")
    if experts and not used:
        raise _refuse(f"{arch}.expert_count is {experts} but {arch}.expert_used_count is 0")


def _check_attention(metadata: Mapping[str, Any], arch: str,
                     shapes: Mapping[str, tuple[int, ...]]) -> None:
    head_key, kv_key = f"{arch}.attention.head_count", f"{arch}.attention.head_count_kv"
    heads = _per_layer(metadata, head_key)
    if heads is None:
        return
    heads_kv = _per_layer(metadata, kv_key) or heads
    layers = max(len(heads), len(heads_kv))
    if len(heads) == 1:  # one count for every layer
        heads = heads * layers
    if len(heads_kv) == 1:
        heads_kv = heads_kv * layers
    for layer, (n_head, n_head_kv) in enumerate(zip(heads, heads_kv, strict=False)):
        where = f" (layer {layer})" if len(heads) > 1 else ""
        if n_head < 0 or n_head_kv < 0:
            raise _refuse(f"{head_key} or {kv_key} is negative{where}")
        if n_head and not n_head_kv:
            raise _refuse(f"{kv_key} is 0 but {head_key} is {n_head}{where}")
        if n_head_kv and not n_head:
            raise _refuse(f"{head_key} is 0 but {kv_key} is {n_head_kv}{where}")
        if n_head and n_head % n_head_kv:
            raise _refuse(f"{head_key} ({n_head}) is not a multiple of {kv_key} "
                          f"({n_head_kv}){where}")
    _check_head_sizes(metadata, arch, heads[0], heads_kv[0], shapes)


def _check_head_sizes(metadata: Mapping[str, Any], arch: str, n_head: int, n_head_kv: int,
                      shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Layer 0's key and value lengths against its K and V weights, and the rope dimensions."""
    attention = f"{arch}.attention"
    if not n_head:
        if any(f"blk.0.attn_{part}.weight" in shapes for part in ("q", "k", "v")):
            raise _refuse(f"{attention}.head_count is 0 but layer 0 has attention weights")
        return
    embedding = _count(metadata, f"{arch}.embedding_length")
    lengths = {}
    for part, key in (("k", f"{attention}.key_length"), ("v", f"{attention}.value_length")):
        length = _count(metadata, key)
        if length is None and embedding:  # llama.cpp's default
            length, key = embedding // n_head, f"{arch}.embedding_length / head_count"
        if length is not None and length <= 0:
            raise _refuse(f"{key} is {length}")
        if length is not None:
            lengths[part] = length
        shape = shapes.get(f"blk.0.attn_{part}.weight")
        if length is not None and shape is not None and len(shape) == 2 \
                and shape[1] != n_head_kv * length:
            raise _refuse(
                f"blk.0.attn_{part}.weight has {shape[1]} outputs but {attention}.head_count_kv "
                f"x {key} is {n_head_kv} x {length}")
    rope = _count(metadata, f"{arch}.rope.dimension_count")
    if rope is not None and "k" in lengths and rope > lengths["k"]:
        raise _refuse(f"{arch}.rope.dimension_count ({rope}) is more than the key length "
                      f"({lengths['k']})")


def _check_norm_epsilons(metadata: Mapping[str, Any], arch: str) -> None:
    """ggml's norms assert ``eps >= 0``: NaN and negative values abort on the first decode."""
    for key in (f"{arch}.attention.layer_norm_epsilon",
                f"{arch}.attention.layer_norm_rms_epsilon"):
        eps = metadata.get(key)
        if isinstance(eps, float) and not (math.isfinite(eps) and eps >= 0):
            raise _refuse(f"{key} is {eps}, not a finite number of at least 0")
