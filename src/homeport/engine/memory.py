"""How much memory a model needs, and how much the machine has for it."""

from __future__ import annotations

from pathlib import Path

from homeport.engine.llama import KV_CACHE_SIZE_FACTOR, ContextSettings
from homeport.store.gguf import GGUFInfo

GIB = 1024**3
# Compute buffers, logits and allocator slack beyond weights and KV cache; measured at roughly
# 40-120 MiB for small models at n_batch 512, so this errs on the generous side.
_OVERHEAD_BYTES = 160 * 1024**2


def estimate_model_bytes(info: GGUFInfo, settings: ContextSettings) -> int:
    """Weights (the file) + KV cache for every slot + logits + fixed overhead."""
    kv_cache = int(settings.n_ctx_total * info.kv_cache_bytes_per_token()
                   * KV_CACHE_SIZE_FACTOR[settings.kv_cache_type])
    vocab = info.metadata.get(f"{info.architecture}.vocab_size")
    vocab_size = vocab if isinstance(vocab, int) else 32000
    logits = vocab_size * 4 * (settings.n_seq + 1)
    return info.file_size + kv_cache + logits + _OVERHEAD_BYTES


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
