"""What the engine's callers pass to llama.cpp and get back, without loading it.

``engine.llama`` loads llama.cpp's library when it is imported; these types are what the server
side (scheduling, placement, memory estimates, runner processes' settings) needs of it, so that a
server which has loaded no model (a gateway node, a laptop with no models) never maps libllama.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from homeport.errors import HomeportError

# Bytes a cache type stores per value, relative to f16's two: blocks of 32 values with a scale.
KV_CACHE_SIZE_FACTOR = {"f16": 1.0, "q8_0": 34 / 64, "q4_0": 18 / 64}


class EngineError(HomeportError):
    """llama.cpp failed in a way the caller could not have prevented."""

    status = 500


@dataclass(frozen=True)
class ContextSettings:
    """Load-time settings: a change to any of them means a reload."""

    n_ctx_per_seq: int
    n_seq: int
    n_batch: int = 512
    n_threads: int = 0
    flash_attention: str = "auto"  # auto, on, off
    kv_cache_type: str = "f16"  # f16, q8_0, q4_0
    num_gpu: int = -1  # layers on GPUs: -1 as many as fit (engine.placement), 0 none
    speculation: bool = True  # draft tokens from the request's own text (engine.drafting)
    cache_ram: int = 0  # bytes of slot states kept for returning conversations (prompt_cache)
    draft_model: Path | None = None  # a model that drafts tokens (engine.draft_model)
    exact: bool = False  # the same logits at any step though nothing below asks (the default)

    @property
    def n_ctx_total(self) -> int:
        return self.n_ctx_per_seq * self.n_seq

    @property
    def same_logits_at_any_step(self) -> bool:
        """Whether a token's logits must not depend on how many tokens its step holds: where
        asked (``exact``: then neither speculation nor batching changes an answer), where
        speculation verifies drafts, and without flash attention, the setting that keeps answers
        exact under batching on an engine without homeport's patch (see ``kernel_environment``)."""
        return self.exact or self.speculation or self.flash_attention == "off"


@dataclass(frozen=True)
class Offload:
    """Where llama.cpp puts the layers (``engine.placement`` decides): ``n_gpu_layers`` of them
    on GPUs, by index among the offload devices; the experts of the first ``cpu_expert_layers``
    layers stay in host memory. The default keeps everything on the CPU."""

    n_gpu_layers: int = 0
    split_mode: str = "none"  # none: all on main_gpu; layer: in tensor_split's proportions
    main_gpu: int = 0
    tensor_split: tuple[float, ...] = ()
    cpu_expert_layers: int = 0
    # RPC workers (host:port) registered before the load; their devices come first in the
    # device list that main_gpu and tensor_split index.
    rpc_servers: tuple[str, ...] = ()

    def expert_patterns(self) -> list[str]:
        """llama.cpp tensor buffer override patterns (as ``--n-cpu-moe`` writes them)."""
        return [rf"blk\.{layer}\.ffn_(up|down|gate|gate_up)_(ch|)exps"
                for layer in range(self.cpu_expert_layers)]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1
    grammar: str | None = None


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def kernel_environment(settings: ContextSettings) -> dict[str, str]:
    """The environment a process that loads a model with ``settings`` needs besides its own.

    Speculation verifies a draft in one step with the next token and takes the drafted tokens the
    model would have picked alone, and batching decodes several requests' tokens in one step:
    both are exact only if a token's logits do not depend on how many tokens its step holds.
    ggml's CPU backend switches K-quant weights to tiled kernels from 8 tokens a step (and
    repacked weights to other kernels from 4, which ``LlamaModel`` turns off at load): measured on
    Gemma 3 270M with flash attention off, logits at 119 of 120 positions differed in their last
    bits between 1 and 4, 8 or 16 tokens a step, and at none without them, for about 10% of its
    prompt speed. The rest the engine ``./dev`` builds mends where ``GGML_CPU_STEP_INVARIANT``
    asks (``engine-patches/apply.py``): llamafile's kernels, which take over from 2 tokens and sum
    in another order than ggml's one-token dot products, take one-token steps too, and flash
    attention computes each query alone (a lone query over 512 or more cells, and 64 or more
    queries, went other ways). An engine without the patch gets the scheduler's pads instead
    (``LlamaModel.steps_sum_alike``, ``engine.step_shape``). ggml reads both switches once per
    process."""
    return dict(STEP_INVARIANT_KERNELS) if settings.same_logits_at_any_step else {}


# What ``kernel_environment`` asks of ggml where a token's sums must not depend on its step.
STEP_INVARIANT_KERNELS = {"GGML_CPU_TILED_MM": "0", "GGML_CPU_STEP_INVARIANT": "1"}
