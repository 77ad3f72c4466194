"""How much memory a model needs, and how much the machine has for it."""

from __future__ import annotations

from pathlib import Path

from homeport.engine.llama_types import KV_CACHE_SIZE_FACTOR, ContextSettings
from homeport.store.gguf import GGUFInfo, read_gguf

GIB = 1024**3
# Compute buffers, logits and allocator slack beyond weights and KV cache; measured at roughly
# 40-120 MiB for small models at n_batch 512, so this errs on the generous side.
HOST_OVERHEAD_BYTES = 160 * 1024**2


# Ollama's default context by (V)RAM: 4k below 23 GiB, 32k below 47 GiB, 256k above.
_CONTEXT_TIERS = ((47 * GIB, 262144), (23 * GIB, 32768), (0, 4096))
_CONTEXT_STEP = 1024  # a chosen context is a whole number of these
MIN_DEFAULT_CONTEXT = 2048


def _kv_bytes_per_token(info: GGUFInfo, kv_cache_type: str) -> float:
    return info.kv_cache_bytes_per_token() * KV_CACHE_SIZE_FACTOR[kv_cache_type]


def vocab_size(info: GGUFInfo) -> int:
    vocab = info.arch_value("vocab_size")
    return vocab if isinstance(vocab, int) else 32000


def logits_bytes(info: GGUFInfo, n_seq: int) -> int:
    """The f32 logits of one token per slot, and one more row."""
    return vocab_size(info) * 4 * (n_seq + 1)


def kv_cache_bytes(info: GGUFInfo, settings: ContextSettings) -> int:
    """K/V cache for every slot's context, all layers together."""
    return int(settings.n_ctx_total * _kv_bytes_per_token(info, settings.kv_cache_type))


def _fixed_bytes(info: GGUFInfo, n_seq: int) -> int:
    """What a loaded model costs whatever its context: weights, logits and overhead."""
    return info.file_size + logits_bytes(info, n_seq) + HOST_OVERHEAD_BYTES


def estimate_model_bytes(info: GGUFInfo, settings: ContextSettings) -> int:
    """Weights (the file) + KV cache for every slot + logits + fixed overhead + the RAM prompt
    cache, all in host memory (``placement`` says how much of it a GPU takes instead)."""
    return _fixed_bytes(info, settings.n_seq) + kv_cache_bytes(info, settings) + settings.cache_ram


def draft_model_bytes(settings: ContextSettings) -> int:
    """What the draft model ``settings`` name takes beside the model (0 without one): its
    weights and a K/V cache as long as the model's, in host memory."""
    if settings.draft_model is None:
        return 0
    draft = read_gguf(settings.draft_model)
    return _fixed_bytes(draft, settings.n_seq) + kv_cache_bytes(draft, settings)


def prompt_cache_bytes(info: GGUFInfo, settings: ContextSettings, budget: int) -> int:
    """The RAM prompt cache a model gets: the configured budget, but no more than four times its
    slots' K/V cache (sixteen whole contexts kept at four slots)."""
    return min(budget, 4 * kv_cache_bytes(info, settings))


def choose_context_length(trained_context: int, memory: int, fixed_bytes: int,
                          kv_bytes_per_token: float, slots: int) -> int:
    """The context per slot to load a model with when nobody chose one: Ollama's tier for
    ``memory`` (4k / 32k / 256k), no more than the model was trained on, and no more than fits in
    ``memory`` beside the model's ``fixed_bytes`` with ``slots`` caches of
    ``kv_bytes_per_token`` each. Never under 2048 (or the trained context, if smaller): a model
    that does not fit even so is refused at load with a message that says so."""
    tier = next(length for floor, length in _CONTEXT_TIERS if memory >= floor)
    per_token = max(kv_bytes_per_token, 1.0) * max(slots, 1)
    fits = int(max(memory - fixed_bytes, 0) // per_token) // _CONTEXT_STEP * _CONTEXT_STEP
    floor = min(MIN_DEFAULT_CONTEXT, trained_context)
    return max(floor, min(tier, trained_context, fits))


def default_context_length(info: GGUFInfo, memory: int, n_seq: int, kv_cache_type: str) -> int:
    """``choose_context_length`` for this model file."""
    return choose_context_length(info.context_length, memory, _fixed_bytes(info, n_seq),
                                 _kv_bytes_per_token(info, kv_cache_type), n_seq)


def _meminfo() -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return values


def _cgroup_limit_and_usage() -> tuple[int, int] | None:
    """The cgroup v2 memory limit and current usage, when this process runs under one."""
    base = Path("/sys/fs/cgroup")
    try:
        limit = (base / "memory.max").read_text().strip()
        usage = int((base / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    if limit == "max" or not limit.isdigit():
        return None
    return int(limit), usage


def available_memory() -> int:
    """Bytes a new model can use now: MemAvailable, capped by the cgroup limit if tighter."""
    available = _meminfo().get("MemAvailable", 8 * GIB)
    cgroup = _cgroup_limit_and_usage()
    if cgroup is not None:
        limit, usage = cgroup
        available = min(available, max(limit - usage, 0))
    return available
