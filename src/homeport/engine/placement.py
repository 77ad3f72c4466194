"""Which of a model's layers go to which GPU, and what stays in host memory: Ollama's way.

A model is ``block_count`` repeating layers plus the output layer, as llama.cpp counts them for
``n_gpu_layers``: offloading N layers puts the *last* N of those on GPUs (the output layer first),
and the input embeddings always stay on the CPU. ``place`` is a pure function of what the model
needs (``model_needs``: per-layer weights and K/V cache, the output layer, a compute buffer per GPU)
and the devices' free memory:

- everything on one GPU when it fits there (the one with the most room);
- otherwise spread over the GPUs in proportion to their room (free memory less the reserve and a
  compute buffer), as llama.cpp's ``tensor_split`` takes it;
- for a mixture of experts, first the expert tensors (``ffn_*_exps``) of the first K layers stay in
  host memory, the smallest K that lets every layer onto the GPUs (llama.cpp's ``--n-cpu-moe``);
- otherwise as many layers as fit, with every expert tensor in host memory, the rest on the CPU.

``num_gpu`` (Ollama's option) overrides the count: 0 keeps the model on the CPU, N offloads N
layers (at most all of them) whether or not the estimate says they fit. ``gpu_overhead`` is kept
free on every GPU (``OLLAMA_GPU_OVERHEAD``). ``spread`` (``OLLAMA_SCHED_SPREAD``) splits over every
offload device even when one would hold the model.

RPC workers' devices (``Device.endpoint`` set) are offload devices like GPUs, and come first in
llama.cpp's device list, as it orders them. They are for models that do not fit otherwise: unless
``num_gpu`` or ``spread`` says to use every device, a model whose host share fits in ``host_room``
is placed on this machine alone. Only the workers that get layers are registered in the runner
(``Offload.rpc_servers``), so the split is written for that shorter list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from homeport.engine.devices import Device
from homeport.engine.llama_types import ContextSettings, Offload
from homeport.engine.memory import HOST_OVERHEAD_BYTES, kv_cache_bytes, logits_bytes, vocab_size
from homeport.humanize import format_bytes
from homeport.store.gguf import GGUFInfo

_LAYER = re.compile(r"^blk\.(\d+)\.")
# llama.cpp's LLM_FFN_EXPS_REGEX: the routed experts' tensors (shared experts are not matched).
EXPERT_TENSORS = re.compile(r"\.ffn_(up|down|gate|gate_up)_(ch|)exps")


@dataclass(frozen=True)
class LayerCost:
    """Bytes of one repeating layer: its weights, its expert tensors, its K/V cache."""

    weights: int
    experts: int
    kv_cache: int

    @property
    def total(self) -> int:
        return self.weights + self.experts + self.kv_cache


@dataclass(frozen=True)
class ModelNeeds:
    """What a model costs, per piece that can move (see ``model_needs``)."""

    layers: tuple[LayerCost, ...]
    output_on_gpu: int  # the output layer's bytes on a GPU (a tied output copies token_embd)
    output_on_host: int  # the bytes that leave host memory when the output layer is offloaded
    host_fixed: int  # always in host memory: input embeddings, file header, logits, overhead
    gpu_compute: int  # compute buffer on every GPU that holds layers

    @property
    def units(self) -> int:
        """Layers as ``n_gpu_layers`` counts them: the repeating ones and the output layer."""
        return len(self.layers) + 1

    @property
    def has_experts(self) -> bool:
        return any(layer.experts for layer in self.layers)


@dataclass(frozen=True)
class DeviceShare:
    name: str
    layers: int
    bytes: int
    endpoint: str = ""  # the worker's host:port; empty for this machine's GPUs


@dataclass(frozen=True)
class MachineShare:
    """How much of a model one machine holds: ``local`` is this one (its CPU and GPUs)."""

    machine: str
    layers: int
    bytes: int


@dataclass(frozen=True)
class Placement:
    offload: Offload
    gpus: tuple[DeviceShare, ...]  # only the GPUs that got layers
    host_bytes: int
    units: int
    reason: str
    cpu_expert_layers: int = 0

    @property
    def gpu_bytes(self) -> int:
        """Bytes on offload devices: this machine's GPUs and the workers'."""
        return sum(share.bytes for share in self.gpus)

    @property
    def local_gpu_bytes(self) -> int:
        """Bytes in this machine's GPU memory (``size_vram``)."""
        return sum(share.bytes for share in self.gpus if not share.endpoint)

    def machines(self) -> list[MachineShare]:
        """This machine's share, then each worker's, in device order."""
        remote: dict[str, tuple[int, int]] = {}
        for share in self.gpus:
            if share.endpoint:
                layers, size = remote.get(share.endpoint, (0, 0))
                remote[share.endpoint] = (layers + share.layers, size + share.bytes)
        local_layers = self.units - sum(layers for layers, _ in remote.values())
        return [MachineShare("local", local_layers, self.host_bytes + self.local_gpu_bytes),
                *(MachineShare(endpoint, layers, size)
                  for endpoint, (layers, size) in remote.items())]

    @property
    def total_bytes(self) -> int:
        return self.host_bytes + self.gpu_bytes

    @property
    def gpu_layers(self) -> int:
        return sum(share.layers for share in self.gpus)

    def describe(self) -> str:
        """One line for the load log: who got what, and why."""
        parts = [f"{share.name}{f' on {share.endpoint}' if share.endpoint else ''} "
                 f"{share.layers} layers ({format_bytes(share.bytes)})" for share in self.gpus]
        parts.append(f"CPU {self.units - self.gpu_layers} layers ({format_bytes(self.host_bytes)} "
                     "in host memory)")
        experts = (f", experts of {self.cpu_expert_layers} layers kept on the CPU"
                   if self.cpu_expert_layers else "")
        return f"{self.gpu_layers}/{self.units} layers on {self._offload_kinds()}: " \
               f"{', '.join(parts)}{experts}: {self.reason}"

    def _offload_kinds(self) -> str:
        """What the offloaded layers sit on: this machine's GPUs, RPC workers, or both (a
        worker's device is a GPU or a CPU on another machine, not this one's GPU)."""
        kinds = [kind for kind, present in (
            ("GPU", any(not share.endpoint for share in self.gpus)),
            ("workers", any(share.endpoint for share in self.gpus))) if present]
        return " and ".join(kinds) or "GPU"


def compute_buffer_bytes(info: GGUFInfo, settings: ContextSettings) -> int:
    """A GPU's compute buffer for a full batch: Ollama's estimate for llama-like graphs, the
    larger of the attention scores and the output logits, in f32."""
    embd = info.embedding_length
    heads = info.head_count
    batch = min(settings.n_batch, settings.n_ctx_total)
    context = settings.n_ctx_per_seq
    return max(4 * batch * (1 + 4 * embd + context * (1 + heads)),
               4 * batch * (embd + vocab_size(info)))


def model_needs(info: GGUFInfo, settings: ContextSettings) -> ModelNeeds:
    """Per-layer costs from the GGUF's tensors and the K/V cache for ``settings``. Placed all on
    the CPU, they add up to ``memory.estimate_model_bytes``."""
    n_layer = max(info.block_count, 0)
    weights = [0] * n_layer
    experts = [0] * n_layer
    tensors = {tensor.name: tensor.nbytes for tensor in info.tensors}
    for name, nbytes in tensors.items():
        match = _LAYER.match(name)
        if match is None or int(match.group(1)) >= n_layer:
            continue
        layer = int(match.group(1))
        if EXPERT_TENSORS.search(name):
            experts[layer] += nbytes
        else:
            weights[layer] += nbytes
    kv_total = kv_cache_bytes(info, settings)
    layers = tuple(
        LayerCost(weights[i], experts[i],
                  kv_total * (i + 1) // n_layer - kv_total * i // n_layer)
        for i in range(n_layer))
    norm = tensors.get("output_norm.weight", 0)
    own_output = tensors.get("output.weight")
    output_on_gpu = norm + (own_output if own_output is not None
                            else tensors.get("token_embd.weight", 0))
    output_on_host = norm + (own_output or 0)
    logits = logits_bytes(info, settings.n_seq)
    in_layers = sum(weights) + sum(experts)
    # The RAM prompt cache (settings.cache_ram) is host memory wherever the layers go.
    host_fixed = (info.file_size - in_layers - output_on_host + logits + HOST_OVERHEAD_BYTES
                  + settings.cache_ram)
    return ModelNeeds(layers=layers, output_on_gpu=output_on_gpu, output_on_host=output_on_host,
                      host_fixed=host_fixed, gpu_compute=compute_buffer_bytes(info, settings))


def offload_devices(devices: list[Device]) -> list[Device]:
    """The devices llama.cpp offloads to, in its order: the workers' devices, then GPUs, or
    integrated GPUs when there is no discrete one."""
    workers = [device for device in devices if device.endpoint]
    local = [device for device in devices if not device.endpoint]
    gpus = [device for device in local if device.type == "gpu"]
    return workers + (gpus or [device for device in local if device.type == "igpu"])


def _unit_costs(needs: ModelNeeds, count: int, cpu_expert_layers: int) -> list[int]:
    """GPU bytes of the last ``count`` units, when the first ``cpu_expert_layers`` layers keep
    their experts in host memory."""
    costs = [layer.weights + layer.kv_cache + (0 if i < cpu_expert_layers else layer.experts)
             for i, layer in enumerate(needs.layers)]
    costs.append(needs.output_on_gpu)
    return costs[len(costs) - count:]


def proportional_split(count: int, room: list[int]) -> list[int]:
    """``count`` layers shared in proportion to ``room`` (largest remainders, ties to the first)."""
    total = sum(room)
    shares = [count * r // total for r in room]
    by_remainder = sorted(range(len(room)), key=lambda g: (-(count * room[g] % total), g))
    for g in by_remainder[:count - sum(shares)]:
        shares[g] += 1
    return shares


def _fit(costs: list[int], usable: list[int], spread: bool = False) -> list[int] | None:
    """Layers per GPU for ``costs`` (in llama.cpp's order: GPU 0 gets the first chunk), or None;
    ``usable`` is each GPU's room for layers, its compute buffer already set aside."""
    best = max(range(len(usable)), key=lambda g: (usable[g], -g))
    if sum(costs) <= usable[best] and not (spread and len(usable) > 1):
        return [len(costs) if g == best else 0 for g in range(len(usable))]
    if len(usable) == 1 or sum(usable) == 0:
        return None
    shares = proportional_split(len(costs), usable)
    start = 0
    for g, share in enumerate(shares):
        if sum(costs[start:start + share]) > usable[g]:
            return None
        start += share
    return shares


def _on_cpu(needs: ModelNeeds, reason: str) -> Placement:
    host = needs.host_fixed + sum(layer.total for layer in needs.layers) + needs.output_on_host
    return Placement(Offload(), (), host, needs.units, reason)


def _placed(needs: ModelNeeds, gpus: list[Device], shares: list[int], cpu_expert_layers: int,
            reason: str) -> Placement:
    count = sum(shares)
    costs = _unit_costs(needs, count, cpu_expert_layers)
    first_on_gpu = needs.units - count  # llama.cpp offloads the last layers
    host = needs.host_fixed
    for i, layer in enumerate(needs.layers):
        if i < first_on_gpu:
            host += layer.total
        elif i < cpu_expert_layers:
            host += layer.experts
    if count == 0:
        host += needs.output_on_host
    gpu_shares, start = [], 0
    for g, share in enumerate(shares):
        if share:
            chunk = sum(costs[start:start + share]) + needs.gpu_compute
            gpu_shares.append(DeviceShare(gpus[g].name, share, chunk, gpus[g].endpoint))
        start += share
    # The runner registers only the workers that got layers: its device list is shorter.
    workers = tuple(dict.fromkeys(gpus[g].endpoint for g, share in enumerate(shares)
                                  if share and gpus[g].endpoint))
    kept = [g for g in range(len(gpus)) if not gpus[g].endpoint or gpus[g].endpoint in workers]
    shares = [shares[g] for g in kept]
    used = [index for index, share in enumerate(shares) if share]
    if len(used) == 1:
        offload = Offload(n_gpu_layers=count, split_mode="none", main_gpu=used[0],
                          cpu_expert_layers=cpu_expert_layers, rpc_servers=workers)
    else:
        offload = Offload(n_gpu_layers=count, split_mode="layer", main_gpu=used[0],
                          tensor_split=tuple(float(share) for share in shares),
                          cpu_expert_layers=cpu_expert_layers, rpc_servers=workers)
    return Placement(offload, tuple(gpu_shares), host, needs.units, reason, cpu_expert_layers)


def place(needs: ModelNeeds, devices: list[Device], num_gpu: int = -1,
          gpu_overhead: int = 0, spread: bool = False, host_room: int | None = None) -> Placement:
    """Where each layer goes; see the module docstring."""
    if any(device.endpoint for device in devices) and num_gpu < 0 and not spread \
            and host_room is not None:
        local = place(needs, [device for device in devices if not device.endpoint],
                      gpu_overhead=gpu_overhead)
        if local.host_bytes <= host_room:
            return local
        placed = _place(needs, devices, num_gpu, gpu_overhead, spread)
        return replace(placed, reason=f"{placed.reason} (this machine alone would need "
                                      f"{format_bytes(local.host_bytes)} of host memory)")
    return _place(needs, devices, num_gpu, gpu_overhead, spread)


def _place(needs: ModelNeeds, devices: list[Device], num_gpu: int, gpu_overhead: int,
           spread: bool) -> Placement:
    gpus = offload_devices(devices)
    if not gpus:
        return _on_cpu(needs, "no GPU device")
    if num_gpu == 0:
        return _on_cpu(needs, "num_gpu is 0")
    # Each GPU's room for layers: free memory less the reserve and its compute buffer.
    usable = [max(gpu.free - gpu_overhead - needs.gpu_compute, 0) for gpu in gpus]
    asked = num_gpu > 0
    wanted = min(num_gpu, needs.units) if asked else needs.units
    all_experts = len(needs.layers) if needs.has_experts else 0
    # Every expert split for the wanted count first, then fewer layers with experts on the CPU.
    attempts = [(wanted, k) for k in range(all_experts + 1)]
    if not asked:
        attempts += [(count, all_experts) for count in range(wanted - 1, 0, -1)]
    for count, cpu_experts in attempts:
        shares = _fit(_unit_costs(needs, count, cpu_experts), usable, spread)
        if shares is not None:
            return _placed(needs, gpus, shares, cpu_experts,
                           _reason(asked, num_gpu, count, needs.units, shares, spread))
    if asked:
        # The caller's count stands even when the estimate says it does not fit, as in Ollama.
        shares = (proportional_split(wanted, usable) if len(gpus) > 1 and sum(usable) > 0
                  else [wanted] + [0] * (len(gpus) - 1))
        return _placed(needs, gpus, shares, all_experts,
                       f"num_gpu {num_gpu} asked, beyond the estimated free GPU memory")
    return _on_cpu(needs, "not even one layer fits in free GPU memory")


def _reason(asked: bool, num_gpu: int, count: int, units: int, shares: list[int],
            spread_asked: bool) -> str:
    if spread_asked and len(shares) > 1:
        return (f"num_gpu {num_gpu} asked" if asked else "the model fits") + \
            ", spread over every device as HOMEPORT_SCHED_SPREAD asks"
    if asked:
        return f"num_gpu {num_gpu} asked"
    spread = sum(1 for share in shares if share) > 1
    if count == units:
        return ("the model fits only spread over the GPUs, split by free memory" if spread
                else "the model fits on one GPU")
    return (f"only {count} of {units} layers fit in free GPU memory"
            + (", split by free memory" if spread else ""))
