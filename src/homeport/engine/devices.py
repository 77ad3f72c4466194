"""The devices llama.cpp can place a model on, as ggml's backend device registry lists them.

llama-cpp-python does not bind the registry, so the few functions used here are bound with ctypes
against the libggml it already loaded (``llama_cpp._ggml``). Asking a GPU for its free memory makes
its driver set up a context in the asking process (hundreds of MiB of GPU memory on CUDA), which the
server must not hold: with a GPU build, ``discover_devices`` asks a short-lived child process
(``python -m homeport.engine.devices``) instead. A CPU-only build lists in-process.

RPC workers (``homeport worker`` on other machines) are listed the same way, always from a child:
registering one makes llama.cpp connect to it, and a worker that does not answer aborts the process
that asked. A child that dies naming a worker is asked again without it; one that dies without
naming one has each worker asked about alone.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import functools
import json
import logging
import os
import re
import sys
from dataclasses import asdict, dataclass
from typing import Any

from homeport.engine.runner import abort_message

log = logging.getLogger(__name__)
DISCOVERY_TIMEOUT = 60.0
WORKER_CONNECT_TIMEOUT = 5.0
# enum ggml_backend_dev_type
_DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}


@dataclass(frozen=True)
class Device:
    """One ggml backend device: ``type`` is cpu, gpu, igpu or accel; memory in bytes. A worker's
    device (RPC0, RPC1, ...) names its worker's ``host:port`` in ``endpoint``."""

    name: str
    type: str
    free: int
    total: int
    description: str = ""
    endpoint: str = ""


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


def device_of(handle: int) -> Device:
    """One registry device (a ``ggml_backend_dev_t``) with its memory now."""
    from homeport.engine import rpc  # binds ggml-rpc: only where a model runs

    registry = _registry()
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    registry.memory(handle, ctypes.byref(free), ctypes.byref(total))
    description = _text(registry.description(handle))
    return Device(
        name=_text(registry.name(handle)),
        type=_DEVICE_TYPES.get(int(registry.type(handle)), "other"),
        free=int(free.value), total=int(total.value), description=description,
        # ggml-rpc describes a worker's device by the endpoint it was added with
        endpoint=description if rpc.is_rpc_device(handle) else "")


def list_devices() -> list[Device]:
    """Every device in ggml's registry, in registry order, with its memory now (in-process)."""
    registry = _registry()
    return [device_of(registry.get(index)) for index in range(int(registry.count()))]


def gpu_build() -> bool:
    """Whether this llama.cpp can offload to a GPU at all."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


async def discover_devices(workers: tuple[str, ...] = ()) -> list[Device]:
    """``list_devices`` with the ``workers``' devices added, from a child process when a GPU
    driver or a worker could be involved. Workers that cannot be reached are left out."""
    if not workers and not gpu_build():
        return list_devices()
    reachable = [worker for worker in workers if await _accepts(worker)]
    isolated = False
    while reachable or gpu_build():
        devices, status, complaint = await _ask_child(reachable)
        if status == 0 and devices:
            return devices
        # The abort names the worker it gave up on, or not ("Remote RPC server crashed or
        # returned malformed response"): then each worker is asked alone, once.
        failed = _named_worker(complaint, reachable) or (
            reachable[0] if len(reachable) == 1 else None)
        if failed is not None:
            log.warning("RPC worker %s failed (%s): placing without it", failed, complaint)
            reachable.remove(failed)
        elif reachable and not isolated:
            isolated = True
            alone = [(worker, await _ask_child([worker])) for worker in reachable]
            for worker, (_, alone_status, alone_complaint) in alone:
                if alone_status != 0:
                    log.warning("RPC worker %s failed (%s): placing without it", worker,
                                alone_complaint)
            reachable = [worker for worker, (_, alone_status, _) in alone if alone_status == 0]
        elif reachable:
            log.warning("listing the RPC workers' devices failed (%s): placing without them",
                        complaint or f"status {status}")
            reachable = []
        else:
            log.warning("listing the GPU devices failed (status %s): placing on the CPU only",
                        status)
            return []
    return list_devices()


async def _accepts(worker: str) -> bool:
    """Whether ``worker`` accepts a TCP connection (sending nothing: its gate forwards nothing to
    ggml until the first byte); an unreachable machine would hold the child for minutes."""
    host, _, port = worker.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host.strip("[]"), int(port)), timeout=WORKER_CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        log.warning("RPC worker %s is unreachable (%s): placing without it", worker,
                    exc.strerror if isinstance(exc, OSError) and exc.strerror else "timed out")
        return False
    writer.close()
    return True


async def _ask_child(workers: list[str]) -> tuple[list[Device], int | None, str]:
    """The child's devices, exit status and abort message."""
    argv = [sys.executable, "-m", "homeport.engine.devices"]
    if workers:
        argv += ["--workers", ",".join(workers)]
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "GGML_NO_BACKTRACE": "1"})
    try:
        output, errors = await asyncio.wait_for(process.communicate(), timeout=DISCOVERY_TIMEOUT)
    except TimeoutError:
        output, errors = b"", b"listing devices timed out"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lines = errors.decode("utf-8", "replace").splitlines()
    complaint = abort_message(lines) or (lines[-1][:300] if lines else "")
    return parse_devices(output), process.returncode, complaint


def _named_worker(message: str, workers: list[str]) -> str | None:
    """The worker an abort message names ("Failed to connect to HOST:PORT", "RPC handshake
    failed for HOST:PORT")."""
    for worker in workers:
        if re.search(rf"(?<![\w.:\[]){re.escape(worker)}(?![\w.:])", message):
            return worker
    return None


def parse_devices(output: bytes) -> list[Device]:
    """The child's JSON list of devices; no devices (CPU placement) when it said nothing useful."""
    try:
        items = json.loads(output)
        return [Device(name=str(item["name"]), type=str(item["type"]), free=int(item["free"]),
                       total=int(item["total"]), description=str(item.get("description", "")),
                       endpoint=str(item.get("endpoint", "")))
                for item in items]
    except (ValueError, TypeError, KeyError):
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m homeport.engine.devices")
    parser.add_argument("--workers", default="", help="RPC workers to add first: host:port,...")
    args = parser.parse_args(argv)
    from homeport.engine import rpc  # this child process is where llama.cpp is loaded

    workers = [rpc.parse_endpoint(text) for text in args.workers.split(",") if text.strip()]
    if workers:
        rpc.add_servers(workers)
    json.dump([asdict(device) for device in list_devices()], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
