"""ggml's RPC backend through the library, with ctypes: other machines' devices, and ours served.

llama-cpp-python binds none of it. Built with ``-DGGML_RPC=on`` (``./dev`` does), libggml registers
a backend named "RPC" whose ``get_proc_address`` hands out the two functions used here (as
llama.cpp's ``common/arg.cpp`` finds them), from ``ggml/include/ggml-rpc.h``:

    ggml_backend_reg_t ggml_backend_rpc_add_server(const char * endpoint);
    void ggml_backend_rpc_start_server(const char * endpoint, const char * cache_dir,
                                       size_t n_threads, size_t n_devices,
                                       ggml_backend_dev_t * devices);

A worker that cannot be reached, fails the handshake or stops answering makes llama.cpp abort the
whole process (``GGML_ABORT``), so only runner processes and short-lived children call
``add_servers``; the server itself never does.
"""

from __future__ import annotations

import ctypes
from typing import Any

from llama_cpp._ggml import libggml

from homeport import config
from homeport.errors import ConfigError

# RPC_PROTO_MAJOR_VERSION of the vendored ggml-rpc: a worker and a server must agree on it.
PROTOCOL_MAJOR = 7
RPC_REGISTRY_NAME = "RPC"  # what ggml_backend_reg_name says of an RPC device's registry
# enum ggml_backend_dev_type
_TYPE_CPU, _TYPE_GPU, _TYPE_IGPU, _TYPE_ACCEL = 0, 1, 2, 3


def _bind(name: str, restype: Any, argtypes: list[Any]) -> Any:
    function = getattr(libggml, name)
    function.restype = restype
    function.argtypes = argtypes
    return function


_reg_by_name = _bind("ggml_backend_reg_by_name", ctypes.c_void_p, [ctypes.c_char_p])
_reg_proc = _bind("ggml_backend_reg_get_proc_address", ctypes.c_void_p,
                  [ctypes.c_void_p, ctypes.c_char_p])
_register = _bind("ggml_backend_register", None, [ctypes.c_void_p])
_dev_count = _bind("ggml_backend_dev_count", ctypes.c_size_t, [])
_dev_get = _bind("ggml_backend_dev_get", ctypes.c_void_p, [ctypes.c_size_t])
_dev_type = _bind("ggml_backend_dev_type", ctypes.c_int, [ctypes.c_void_p])
_dev_reg = _bind("ggml_backend_dev_backend_reg", ctypes.c_void_p, [ctypes.c_void_p])
_reg_name = _bind("ggml_backend_reg_name", ctypes.c_char_p, [ctypes.c_void_p])
_dev_description = _bind("ggml_backend_dev_description", ctypes.c_char_p, [ctypes.c_void_p])

_AddServer = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)
_StartServer = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                                ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p))


def _function(name: str, prototype: Any) -> Any:
    registry = _reg_by_name(RPC_REGISTRY_NAME.encode())
    if not registry:
        raise ConfigError("this llama.cpp was built without RPC; run `./dev setup` to rebuild "
                          "it with -DGGML_RPC=on")
    address = _reg_proc(registry, name.encode())
    if not address:
        raise ConfigError(f"this llama.cpp's RPC backend has no {name}")
    return prototype(address)


def available() -> bool:
    """Whether the loaded libggml has the RPC backend."""
    return bool(_reg_by_name(RPC_REGISTRY_NAME.encode()))


def parse_endpoint(text: str) -> str:
    """A worker's ``host:port`` as ggml-rpc takes it; ConfigError when it is not one."""
    try:
        return config.worker_endpoint(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def add_servers(endpoints: list[str]) -> None:
    """Register each worker's devices (as RPC0, RPC1, ... in this order). Aborts the process
    when a worker does not answer its handshake: call it only where that may happen."""
    add_server = _function("ggml_backend_rpc_add_server", _AddServer)
    for endpoint in endpoints[:config.MAX_RPC_WORKERS]:
        registry = add_server(endpoint.encode())
        if registry:
            _register(registry)


def is_rpc_device(handle: int) -> bool:
    registry = _dev_reg(handle)
    return bool(registry) and _reg_name(registry) == RPC_REGISTRY_NAME.encode()


def offload_devices(endpoints: tuple[str, ...]) -> list[int]:
    """The devices a model is loaded on when workers are involved, in ``placement``'s order:
    each worker's devices (in ``endpoints`` order), then the local GPUs (or integrated GPUs
    when there is no discrete one). llama.cpp is given this list explicitly: its own choice
    (``devices`` NULL) leaves devices added by ``ggml_backend_register`` out in this build."""
    handles = [_dev_get(index) for index in range(int(_dev_count()))]
    remote = {endpoint: [handle for handle in handles if is_rpc_device(handle)
                         and _dev_description(handle) == endpoint.encode()]
              for endpoint in endpoints}
    local = [handle for handle in handles if not is_rpc_device(handle)]
    gpus = [handle for handle in local if int(_dev_type(handle)) == _TYPE_GPU]
    igpus = [handle for handle in local if int(_dev_type(handle)) == _TYPE_IGPU]
    return [handle for endpoint in endpoints for handle in remote[endpoint]] + (gpus or igpus)


def served_devices() -> list[int]:
    """The devices a worker serves, as ggml's rpc-server picks them: every accelerator that is
    not the CPU, else the CPU."""
    handles = [_dev_get(index) for index in range(int(_dev_count()))]
    local = [handle for handle in handles if not is_rpc_device(handle)]
    accelerators = [handle for handle in local
                    if int(_dev_type(handle)) not in (_TYPE_CPU, _TYPE_ACCEL)]
    return accelerators or [handle for handle in local if int(_dev_type(handle)) == _TYPE_CPU][:1]


def start_server(endpoint: str, cache_dir: str | None, threads: int, devices: list[int]) -> None:
    """Serve ``devices`` over RPC on ``endpoint``; blocks for as long as the process lives (ggml's
    loop has no way out), one client connection at a time. Returns only when it cannot start."""
    start = _function("ggml_backend_rpc_start_server", _StartServer)
    array = (ctypes.c_void_p * len(devices))(*devices)
    start(endpoint.encode(), cache_dir.encode() if cache_dir else None, threads, len(devices),
          array)
