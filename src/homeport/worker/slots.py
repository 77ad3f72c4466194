"""ggml RPC servers on loopback, each in its own thread: the slots the worker's gate hands out.

ggml's server (``ggml_backend_rpc_start_server``) serves one client connection at a time and never
returns, so the worker starts a few, each on an ephemeral loopback port, and gives each admitted
connection an idle one: a runner holding one worker does not lock out the server's next look at the
worker's devices, nor a second model. Nothing but this machine can reach these ports; the gate is
the only way in from the tailnet.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from dataclasses import dataclass, field

import psutil

from homeport.engine import rpc
from homeport.errors import ConfigError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 60.0  # seconds a server thread has to listen (backends start first)
START_ATTEMPTS = 3  # an ephemeral port another process took in the meantime: try another


@dataclass
class Slots:
    """``count`` RPC servers on loopback ports; ``take``/``give_back`` lend them out (on the event
    loop)."""

    count: int
    threads: int
    cache_dir: str | None
    ports: list[int] = field(default_factory=list)
    _idle: asyncio.Queue[int] | None = None

    def start(self) -> None:
        """Start the servers (blocking: call it before the event loop runs)."""
        devices = rpc.served_devices()
        if not devices:
            raise ConfigError("llama.cpp lists no device to serve")
        for _ in range(self.count):
            self.ports.append(self._start_one(devices))

    def _start_one(self, devices: list[int]) -> int:
        for _ in range(START_ATTEMPTS):
            port = _free_port()
            thread = threading.Thread(
                target=rpc.start_server, name=f"rpc-{port}", daemon=True,
                args=(f"{LOOPBACK}:{port}", self.cache_dir, self.threads, devices))
            thread.start()
            deadline = time.monotonic() + START_TIMEOUT
            while thread.is_alive() and time.monotonic() < deadline:
                if _listening(port):
                    return port
                time.sleep(0.05)
            if thread.is_alive():
                raise ConfigError(f"ggml's RPC server did not listen on {LOOPBACK}:{port} "
                                  f"within {START_TIMEOUT:.0f}s")
            log.info("ggml's RPC server could not listen on %s:%d; trying another port",
                     LOOPBACK, port)
        raise ConfigError("ggml's RPC server could not listen on loopback")

    async def take(self, wait: float) -> int | None:
        """An idle server's port, waiting up to ``wait`` seconds for one; None when every one
        stays busy. (ggml's client opens short connections one after another while it sets up:
        the previous one's slot may not be back yet.)"""
        if self._idle is None:
            self._idle = asyncio.Queue()
            for port in self.ports:
                self._idle.put_nowait(port)
        try:
            return await asyncio.wait_for(self._idle.get(), timeout=wait)
        except TimeoutError:
            return None

    def give_back(self, port: int) -> None:
        assert self._idle is not None
        self._idle.put_nowait(port)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _listening(port: int) -> bool:
    """Whether this process listens on the loopback port, seen without connecting to it (a
    connection would be a client to ggml's server)."""
    return any(conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
               for conn in psutil.Process().net_connections(kind="tcp4"))
