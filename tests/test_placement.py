"""Placement of a model's layers on GPUs and the CPU, and how the server reports it.

``place`` is a pure function of the GGUF and a device list, so GPUs of any size are described
here, not needed. Every expected count and byte figure is worked out below from the tensor sizes
the test wrote, not read back from the code. The server half runs on this CPU-only machine.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import gguf
import httpx
import pytest

from homeport.engine.devices import Device, discover_devices, list_devices, parse_devices
from homeport.engine.llama import ContextSettings, LlamaModel, Offload
from homeport.engine.memory import HOST_OVERHEAD_BYTES, estimate_model_bytes
from homeport.engine.options import resolve_options
from homeport.engine.placement import model_needs, place, proportional_split
from homeport.store.bundled import find_bundled_gguf
from homeport.store.gguf import GGUFInfo, read_gguf
from tests.conftest import MODEL
from tests.support.gguf_files import add_llama_tensors, write_out, zeros
from tests.support.server import ServerProcess
from tests.test_cli_models import homeport

N_LAYER, N_EMBD, N_FF, N_VOCAB, N_EXPERT = 4, 32, 64, 64, 4
F32 = 4
SETTINGS = ContextSettings(n_ctx_per_seq=256, n_seq=2, n_batch=512)
MIB = 1024**2

# Bytes worked out by hand (all tensors f32):
ATTENTION = 4 * N_EMBD * N_EMBD * F32  # q, k, v, output: 16384
NORMS = 2 * N_EMBD * F32  # attn_norm, ffn_norm: 256
DENSE_FFN = 3 * N_FF * N_EMBD * F32  # gate, up, down: 24576
ROUTER = N_EXPERT * N_EMBD * F32  # ffn_gate_inp: 512
EXPERTS = 3 * N_EXPERT * N_FF * N_EMBD * F32  # ffn_{gate,up,down}_exps: 98304
OUTPUT = N_EMBD * F32 + N_VOCAB * N_EMBD * F32  # output_norm + output: 8320
# K/V cache: 2 KV heads x (16 + 16) dims x 2 bytes per token and layer, for 256 x 2 tokens.
KV_PER_LAYER = 2 * (16 + 16) * 2 * 256 * 2  # 65536
DENSE_LAYER = ATTENTION + NORMS + DENSE_FFN + KV_PER_LAYER  # 106752 on a GPU
MOE_LAYER_WITHOUT_EXPERTS = ATTENTION + NORMS + ROUTER + KV_PER_LAYER  # 82688
# A GPU's compute buffer (Ollama's estimate): batch 512, context 256, 2 heads.
COMPUTE = max(4 * 512 * (1 + 4 * N_EMBD + 256 * (1 + 2)), 4 * 512 * (N_EMBD + N_VOCAB))


def write_model(path: Path, *, experts: bool) -> GGUFInfo:
    """A tiny llama-shaped GGUF (dense, or with 4 experts per layer) for placement only."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_vocab_size(N_VOCAB)
    if experts:
        writer.add_expert_count(N_EXPERT)
        writer.add_expert_used_count(2)
    add_llama_tensors(writer, zeros, n_vocab=N_VOCAB, n_embd=N_EMBD, n_ff=N_FF, n_layer=N_LAYER,
                      n_expert=N_EXPERT if experts else 0, output=True)
    write_out(writer)
    return read_gguf(path)


@pytest.fixture
def dense(tmp_path: Path) -> GGUFInfo:
    return write_model(tmp_path / "dense.gguf", experts=False)


@pytest.fixture
def moe(tmp_path: Path) -> GGUFInfo:
    return write_model(tmp_path / "moe.gguf", experts=True)


CPU = Device("CPU", "cpu", 64 * 1024 * MIB, 64 * 1024 * MIB)


def gpu(name: str, room_for_layers: int) -> Device:
    """A GPU whose free memory holds ``room_for_layers`` bytes of layers beside its compute buffer."""
    return Device(name, "gpu", COMPUTE + room_for_layers, 24 * 1024 * MIB)


def test_the_per_layer_costs_come_from_the_tensors(dense: GGUFInfo, moe: GGUFInfo) -> None:
    needs = model_needs(dense, SETTINGS)
    assert needs.units == N_LAYER + 1
    assert [(layer.weights, layer.experts, layer.kv_cache) for layer in needs.layers] == \
        [(ATTENTION + NORMS + DENSE_FFN, 0, KV_PER_LAYER)] * N_LAYER
    assert needs.output_on_gpu == needs.output_on_host == OUTPUT
    assert needs.gpu_compute == COMPUTE
    logits = N_VOCAB * 4 * (SETTINGS.n_seq + 1)
    assert needs.host_fixed == (dense.file_size - N_LAYER * (ATTENTION + NORMS + DENSE_FFN)
                                - OUTPUT + logits + HOST_OVERHEAD_BYTES)
    moe_needs = model_needs(moe, SETTINGS)
    assert moe_needs.has_experts
    assert not needs.has_experts
    assert {(layer.weights, layer.experts) for layer in moe_needs.layers} == \
        {(ATTENTION + NORMS + ROUTER, EXPERTS)}


def test_without_a_gpu_everything_stays_on_the_cpu(dense: GGUFInfo) -> None:
    placement = place(model_needs(dense, SETTINGS), [CPU])
    assert placement.offload == Offload()
    assert placement.gpus == ()
    assert placement.host_bytes == placement.total_bytes == estimate_model_bytes(dense, SETTINGS)
    assert "no GPU device" in placement.describe()


def test_one_gpu_that_fits_the_whole_model(dense: GGUFInfo) -> None:
    whole = N_LAYER * DENSE_LAYER + OUTPUT  # 435328
    placement = place(model_needs(dense, SETTINGS), [CPU, gpu("CUDA0", whole)])
    assert placement.offload == Offload(n_gpu_layers=5, split_mode="none", main_gpu=0)
    assert [(share.name, share.layers, share.bytes) for share in placement.gpus] == \
        [("CUDA0", 5, whole + COMPUTE)]
    assert placement.host_bytes == estimate_model_bytes(dense, SETTINGS) - whole
    assert placement.describe().startswith("5/5 layers on GPU: CUDA0 5 layers")


def test_one_gpu_that_fits_half_takes_the_last_layers(dense: GGUFInfo) -> None:
    # Room for the output layer and two repeating layers, with 100 bytes to spare.
    room = 2 * DENSE_LAYER + OUTPUT + 100
    placement = place(model_needs(dense, SETTINGS), [CPU, gpu("CUDA0", room)])
    assert placement.offload.n_gpu_layers == 3
    assert placement.gpus[0].bytes == 2 * DENSE_LAYER + OUTPUT + COMPUTE
    assert placement.host_bytes == estimate_model_bytes(dense, SETTINGS) - 2 * DENSE_LAYER - OUTPUT
    assert "only 3 of 5 layers fit" in placement.reason


def test_two_gpus_of_different_sizes_split_by_their_room(dense: GGUFInfo) -> None:
    # Neither holds all 5 layers alone; together, split 3:2 by room, they do.
    devices = [CPU, gpu("CUDA0", 3 * DENSE_LAYER), gpu("CUDA1", 2 * DENSE_LAYER)]
    placement = place(model_needs(dense, SETTINGS), devices)
    assert placement.offload == Offload(n_gpu_layers=5, split_mode="layer", main_gpu=0,
                                        tensor_split=(3.0, 2.0))
    # llama.cpp gives GPU 0 the first chunk: layers 0-2; GPU 1 gets layer 3 and the output.
    assert [(share.name, share.layers, share.bytes) for share in placement.gpus] == [
        ("CUDA0", 3, 3 * DENSE_LAYER + COMPUTE), ("CUDA1", 2, DENSE_LAYER + OUTPUT + COMPUTE)]
    assert placement.host_bytes == (estimate_model_bytes(dense, SETTINGS)
                                    - N_LAYER * DENSE_LAYER - OUTPUT)
    assert "split by free memory" in placement.reason


def test_the_larger_gpu_alone_when_the_model_fits_there(dense: GGUFInfo) -> None:
    whole = N_LAYER * DENSE_LAYER + OUTPUT
    devices = [CPU, gpu("CUDA0", whole // 2), gpu("CUDA1", whole)]
    placement = place(model_needs(dense, SETTINGS), devices)
    assert placement.offload == Offload(n_gpu_layers=5, split_mode="none", main_gpu=1)
    assert [share.name for share in placement.gpus] == ["CUDA1"]


def test_an_integrated_gpu_is_used_when_there_is_no_discrete_one(dense: GGUFInfo) -> None:
    igpu = Device("Vulkan0", "igpu", COMPUTE + 10 * DENSE_LAYER, 8 * 1024 * MIB)
    assert place(model_needs(dense, SETTINGS), [CPU, igpu]).offload.n_gpu_layers == 5


def test_moe_experts_stay_on_the_cpu_first(moe: GGUFInfo) -> None:
    # All layers with every expert: 4 x (82688 + 98304) + 8320 = 732288. The room holds them with
    # the experts of two layers left in host memory: 732288 - 2 x 98304 = 535680.
    room = N_LAYER * MOE_LAYER_WITHOUT_EXPERTS + 2 * EXPERTS + OUTPUT
    assert room == 535680
    placement = place(model_needs(moe, SETTINGS), [CPU, gpu("CUDA0", room)])
    assert placement.offload.n_gpu_layers == 5
    assert placement.offload.cpu_expert_layers == 2
    assert placement.gpus[0].bytes == room + COMPUTE
    assert placement.host_bytes == estimate_model_bytes(moe, SETTINGS) - room
    patterns = placement.offload.expert_patterns()
    names = [tensor.name for tensor in moe.tensors]
    kept = [name for name in names if any(re.search(pattern, name) for pattern in patterns)]
    assert sorted(kept) == sorted(f"blk.{layer}.ffn_{part}_exps.weight"
                                  for layer in (0, 1) for part in ("gate", "up", "down"))
    assert "experts of 2 layers kept on the CPU" in placement.describe()


def test_moe_too_large_even_without_experts_offloads_fewer_layers(moe: GGUFInfo) -> None:
    room = 2 * MOE_LAYER_WITHOUT_EXPERTS + OUTPUT
    placement = place(model_needs(moe, SETTINGS), [CPU, gpu("CUDA0", room)])
    assert placement.offload.n_gpu_layers == 3  # layers 2 and 3, and the output
    assert placement.offload.cpu_expert_layers == N_LAYER
    assert placement.host_bytes == estimate_model_bytes(moe, SETTINGS) - room


def test_num_gpu_sets_the_layer_count(dense: GGUFInfo) -> None:
    needs = model_needs(dense, SETTINGS)
    big = [CPU, gpu("CUDA0", 10 * DENSE_LAYER)]
    on_cpu = place(needs, big, num_gpu=0)
    assert on_cpu.offload.n_gpu_layers == 0
    assert on_cpu.host_bytes == estimate_model_bytes(dense, SETTINGS)
    two = place(needs, big, num_gpu=2)
    assert two.offload.n_gpu_layers == 2
    assert two.gpus[0].bytes == DENSE_LAYER + OUTPUT + COMPUTE
    assert place(needs, big, num_gpu=99).offload.n_gpu_layers == 5
    # Asked for, it stands even beyond what the estimate says fits (as in Ollama).
    small = [CPU, gpu("CUDA0", DENSE_LAYER)]
    assert place(needs, small).offload.n_gpu_layers == 1
    forced = place(needs, small, num_gpu=4)
    assert forced.offload.n_gpu_layers == 4
    assert "num_gpu 4 asked" in forced.reason
    # Without a GPU there is nowhere to put them.
    assert place(needs, [CPU], num_gpu=99).offload.n_gpu_layers == 0


def test_num_gpu_is_bounded_by_the_model_s_layers() -> None:
    def resolved(value: int) -> int:
        return resolve_options({}, {"num_gpu": value}, 2048, 8192, model_layers=31).num_gpu

    assert resolved(99) == 31
    assert resolved(10**12) == 31
    assert resolved(-5) == -1
    assert resolved(7) == 7
    assert resolve_options({}, None, 2048, 8192, model_layers=31).num_gpu == -1


def test_the_gpu_overhead_reserve_is_kept_free(dense: GGUFInfo) -> None:
    whole = N_LAYER * DENSE_LAYER + OUTPUT
    needs = model_needs(dense, SETTINGS)
    devices = [CPU, gpu("CUDA0", whole)]
    assert place(needs, devices, gpu_overhead=0).offload.n_gpu_layers == 5
    # One byte reserved: the whole model no longer fits, 3 layers and the output (328576) do.
    assert place(needs, devices, gpu_overhead=1).offload.n_gpu_layers == 4
    # Room for the output layer alone, then not even that.
    assert place(needs, devices, gpu_overhead=whole - OUTPUT).offload.n_gpu_layers == 1
    assert place(needs, devices, gpu_overhead=whole - OUTPUT + 1).offload.n_gpu_layers == 0


def worker(name: str, endpoint: str, room_for_layers: int) -> Device:
    """An RPC worker's device, as ggml lists it (type gpu, described by its endpoint)."""
    return Device(name, "gpu", COMPUTE + room_for_layers, 24 * 1024 * MIB, endpoint, endpoint)


def test_two_workers_split_a_model_that_neither_holds(dense: GGUFInfo) -> None:
    devices = [CPU, worker("RPC0", "10.0.0.2:50052", 3 * DENSE_LAYER),
               worker("RPC1", "10.0.0.3:50052", 2 * DENSE_LAYER)]
    placement = place(model_needs(dense, SETTINGS), devices)
    assert placement.offload == Offload(
        n_gpu_layers=5, split_mode="layer", main_gpu=0, tensor_split=(3.0, 2.0),
        rpc_servers=("10.0.0.2:50052", "10.0.0.3:50052"))
    host = estimate_model_bytes(dense, SETTINGS) - N_LAYER * DENSE_LAYER - OUTPUT
    assert [(m.machine, m.layers, m.bytes) for m in placement.machines()] == [
        ("local", 0, host),
        ("10.0.0.2:50052", 3, 3 * DENSE_LAYER + COMPUTE),
        ("10.0.0.3:50052", 2, DENSE_LAYER + OUTPUT + COMPUTE)]
    assert placement.local_gpu_bytes == 0  # size_vram: nothing in this machine's GPU memory
    # The workers' devices are named as such, not as this machine's GPU.
    assert placement.describe().startswith(
        f"5/{N_LAYER + 1} layers on workers: RPC0 on 10.0.0.2:50052 3 layers")


def test_workers_come_first_in_llama_cpp_s_device_order(dense: GGUFInfo) -> None:
    # Listed after the GPU, the worker is still device 0 for llama.cpp: its share comes first.
    devices = [CPU, gpu("CUDA0", 2 * DENSE_LAYER), worker("RPC0", "10.0.0.2:50052",
                                                          3 * DENSE_LAYER)]
    placement = place(model_needs(dense, SETTINGS), devices)
    assert placement.offload.tensor_split == (3.0, 2.0)
    assert placement.offload.rpc_servers == ("10.0.0.2:50052",)
    assert [share.name for share in placement.gpus] == ["RPC0", "CUDA0"]
    assert placement.local_gpu_bytes == DENSE_LAYER + OUTPUT + COMPUTE
    assert placement.describe().startswith(
        f"5/{N_LAYER + 1} layers on GPU and workers: RPC0 on 10.0.0.2:50052 3 layers")


def test_a_worker_that_gets_no_layer_is_not_registered(dense: GGUFInfo) -> None:
    # The local GPU holds the whole model: the runner's device list is that GPU alone, so
    # main_gpu is 0 there (it would be 1 with the worker registered in front of it).
    whole = N_LAYER * DENSE_LAYER + OUTPUT
    devices = [CPU, worker("RPC0", "10.0.0.2:50052", whole // 2), gpu("CUDA0", whole)]
    placement = place(model_needs(dense, SETTINGS), devices)
    assert placement.offload == Offload(n_gpu_layers=5, split_mode="none", main_gpu=0)
    assert [m.machine for m in placement.machines()] == ["local"]


def test_workers_are_used_only_for_what_this_machine_cannot_hold(dense: GGUFInfo) -> None:
    needs = model_needs(dense, SETTINGS)
    devices = [CPU, worker("RPC0", "10.0.0.2:50052", 10 * DENSE_LAYER)]
    whole = estimate_model_bytes(dense, SETTINGS)
    at_home = place(needs, devices, host_room=whole)
    assert at_home.offload == Offload()
    assert at_home.reason == "no GPU device"
    # One byte short at home: the worker takes what it can (here, everything it can offload).
    borrowed = place(needs, devices, host_room=whole - 1)
    assert borrowed.offload.rpc_servers == ("10.0.0.2:50052",)
    assert borrowed.offload.n_gpu_layers == 5
    assert "this machine alone would need" in borrowed.reason
    # num_gpu asks for the layers to leave this machine, wherever they fit.
    assert place(needs, devices, num_gpu=2, host_room=whole).offload.rpc_servers == \
        ("10.0.0.2:50052",)


def test_spread_splits_over_every_device_and_keeps_the_rest_on_the_cpu(dense: GGUFInfo) -> None:
    roomy = 10 * DENSE_LAYER
    devices = [CPU, worker("RPC0", "127.0.0.1:50061", roomy),
               worker("RPC1", "127.0.0.1:50062", roomy)]
    needs = model_needs(dense, SETTINGS)
    alone = place(needs, devices, num_gpu=3)
    assert alone.offload.rpc_servers == ("127.0.0.1:50061",)  # one holds them: one is used
    spread = place(needs, devices, num_gpu=3, spread=True)
    assert spread.offload == Offload(n_gpu_layers=3, split_mode="layer", main_gpu=0,
                                     tensor_split=(2.0, 1.0),
                                     rpc_servers=("127.0.0.1:50061", "127.0.0.1:50062"))
    # The last 3 units leave the CPU: layers 2 and 3 to RPC0, the output to RPC1.
    assert [(m.machine, m.layers) for m in spread.machines()] == [
        ("local", 2), ("127.0.0.1:50061", 2), ("127.0.0.1:50062", 1)]
    assert spread.machines()[2].bytes == OUTPUT + COMPUTE
    assert "HOMEPORT_SCHED_SPREAD" in spread.reason


def test_proportional_split_by_largest_remainder() -> None:
    assert proportional_split(5, [3, 2]) == [3, 2]
    assert proportional_split(31, [24, 12]) == [21, 10]  # 20.67 and 10.33: the .67 gets one
    assert proportional_split(3, [1, 1, 1]) == [1, 1, 1]
    assert proportional_split(4, [1, 1, 1]) == [2, 1, 1]  # ties go to the first


def test_this_machine_lists_one_cpu_device() -> None:
    devices = list_devices()
    assert [device.type for device in devices] == ["cpu"]
    assert devices[0].name == "CPU"
    assert 0 < devices[0].free <= devices[0].total


def test_discovery_in_a_child_process_gives_the_same_devices() -> None:
    child = subprocess.run([sys.executable, "-m", "homeport.engine.devices"],
                           capture_output=True, timeout=120, check=True)
    from_child = parse_devices(child.stdout)
    assert [(d.name, d.type, d.total) for d in from_child] == \
        [(d.name, d.type, d.total) for d in list_devices()]
    assert [d.type for d in asyncio.run(discover_devices())] == ["cpu"]
    assert parse_devices(b"not json") == []


def test_offload_settings_reach_llama_cpp_s_model_params() -> None:
    """Layer split, tensor_split and expert overrides are taken by llama.cpp (on a CPU build every
    layer stays on the CPU, and the model still answers)."""
    path = find_bundled_gguf()
    assert path is not None
    offload = Offload(n_gpu_layers=31, split_mode="layer", tensor_split=(1.0,),
                      cpu_expert_layers=2)
    model = LlamaModel(path, ContextSettings(n_ctx_per_seq=256, n_seq=1), offload)
    try:
        assert model.tokenize("hello")
    finally:
        model.close()


# --- the real server on this CPU-only machine ------------------------------------------------

def test_ps_says_the_model_is_all_on_the_cpu(server: ServerProcess, base_url: str) -> None:
    loaded = httpx.post(f"{base_url}/api/generate", json={"model": MODEL}, timeout=120)
    assert loaded.json()["done_reason"] == "load"
    running = httpx.get(f"{base_url}/api/ps", timeout=30).json()["models"]
    entry = next(model for model in running if model["name"] == MODEL)
    assert entry["size_vram"] == 0
    assert entry["size"] > 90_000_000
    shown = homeport("ps", endpoint=base_url)
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if MODEL in line)
    assert "100% CPU" in row
    assert re.search(rf"placing {re.escape(MODEL)}: 0/31 layers on GPU: CPU 31 layers .*: "
                     "no GPU device", server.log())


@pytest.mark.parametrize("num_gpu", [0, 99])
def test_num_gpu_on_a_cpu_only_machine_still_answers(base_url: str, num_gpu: int) -> None:
    answer = httpx.post(f"{base_url}/api/generate", json={
        "model": MODEL, "prompt": "Hi", "stream": False,
        "options": {"num_gpu": num_gpu, "num_predict": 3, "temperature": 0}}, timeout=300)
    assert answer.status_code == 200, answer.text
    assert answer.json()["eval_count"] >= 1
    running = httpx.get(f"{base_url}/api/ps", timeout=30).json()["models"]
    assert [model["size_vram"] for model in running if model["name"] == MODEL] == [0]


def test_processor_column_as_ollama_words_it() -> None:
    from homeport.cli.models import processor

    assert processor(1000, 0) == "100% CPU"
    assert processor(1000, 1000) == "100% GPU"
    assert processor(1000, 630) == "37%/63% CPU/GPU"
    assert processor(1000, 2000) == "Unknown"
