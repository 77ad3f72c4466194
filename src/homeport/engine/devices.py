"""The devices llama.cpp can place a model on, as ggml's backend device registry lists them.

llama-cpp-python does not bind the registry, so the few functions used here are bound with ctypes
against the libggml it already loaded (``llama_cpp._ggml``). Asking a GPU for its free memory makes
its driver set up a context in the asking process (hundreds of MiB of GPU memory on CUDA), which the
server must not hold: with a GPU build, ``discover_devices`` asks a short-lived child process
(``python -m homeport.engine.devices``) instead. A CPU-only build lists in-process.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import json
import logging
import sys
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)
DISCOVERY_TIMEOUT = 60.0
# enum ggml_backend_dev_type
_DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}


@dataclass(frozen=True)
class Device:
    """One ggml backend device: ``type`` is cpu, gpu, igpu or accel; memory in bytes."""

    name: str
    type: str
    free: int
    total: int
    description: str = ""


@dataclass(frozen=True)
class _Registry:
    """ggml's device registry functions, bound on first use: binding them loads llama.cpp, which
    a server does only once it loads a model."""

    count: Any
    get: Any
    name: Any
    description: Any
    type: Any
    memory: Any


@functools.cache
def _registry() -> _Registry:
    from llama_cpp._ggml import libggml

    def bind(name: str, restype: Any, argtypes: list[Any]) -> Any:
        function = getattr(libggml, name)
        function.restype = restype
        function.argtypes = argtypes
        return function

    return _Registry(
        count=bind("ggml_backend_dev_count", ctypes.c_size_t, []),
        get=bind("ggml_backend_dev_get", ctypes.c_void_p, [ctypes.c_size_t]),
        name=bind("ggml_backend_dev_name", ctypes.c_char_p, [ctypes.c_void_p]),
        description=bind("ggml_backend_dev_description", ctypes.c_char_p, [ctypes.c_void_p]),
        type=bind("ggml_backend_dev_type", ctypes.c_int, [ctypes.c_void_p]),
        memory=bind("ggml_backend_dev_memory", None, [
            ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]))


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace") if raw else ""


def list_devices() -> list[Device]:
    """Every device in ggml's registry, in registry order, with its memory now (in-process)."""
    registry = _registry()
    devices = []
    for index in range(int(registry.count())):
        handle = registry.get(index)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        registry.memory(handle, ctypes.byref(free), ctypes.byref(total))
        devices.append(Device(
            name=_text(registry.name(handle)),
            type=_DEVICE_TYPES.get(int(registry.type(handle)), "other"),
            free=int(free.value), total=int(total.value),
            description=_text(registry.description(handle))))
    return devices


def gpu_build() -> bool:
    """Whether this llama.cpp can offload to a GPU at all."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


async def discover_devices() -> list[Device]:
    """``list_devices``, from a child process when a GPU driver could be involved."""
    if not gpu_build():
        return list_devices()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "homeport.engine.devices", stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=DISCOVERY_TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    devices = parse_devices(output)
    if process.returncode != 0 or not devices:
        log.warning("listing the GPU devices failed (status %s): placing on the CPU only",
                    process.returncode)
    return devices


def parse_devices(output: bytes) -> list[Device]:
    """The child's JSON list of devices; no devices (CPU placement) when it said nothing useful."""
    try:
        items = json.loads(output)
        return [Device(name=str(item["name"]), type=str(item["type"]), free=int(item["free"]),
                       total=int(item["total"]), description=str(item.get("description", "")))
                for item in items]
    except (ValueError, TypeError, KeyError):
        return []


def main() -> int:
    json.dump([asdict(device) for device in list_devices()], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
