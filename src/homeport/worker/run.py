"""Running a worker: ggml's RPC servers on loopback, the gate on the listen address, until stopped.

SIGHUP reloads the policy (a broken file keeps the old one, as the server does). On SIGINT or
SIGTERM the gate stops and the process exits: ggml's server loop has no way to be stopped, so its
threads end with the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys

from homeport import __version__, config
from homeport.engine import rpc
from homeport.engine.devices import device_of
from homeport.engine.llama_types import STEP_INVARIANT_KERNELS
from homeport.errors import ConfigError
from homeport.humanize import format_bytes
from homeport.net.binding import open_tcp
from homeport.net.localapi import LocalAPI
from homeport.net.policy import Policy, describe
from homeport.worker.gate import WorkerGate
from homeport.worker.listen import ListenAddress
from homeport.worker.slots import Slots

log = logging.getLogger("homeport.worker")


def run_worker(address: ListenAddress, slots: int, threads: int, per_peer: int) -> None:
    if not rpc.available():
        raise ConfigError("this llama.cpp was built without RPC; run `./dev setup` to rebuild it "
                          "with -DGGML_RPC=on")
    policy_path, required = config.policy_file()
    policy = Policy.load(policy_path, required)
    # The gate's address first: a port in use fails before any ggml server starts.
    try:
        listening = open_tcp(address.host, address.port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {address.endpoint}: {exc.strerror or exc}") from None
    # A runner that places layers here may need each token's sums to be the same at any step
    # size, as its own kernels give them (kernel_environment): ggml reads these at its first
    # matrix product, after this.
    os.environ.update(STEP_INVARIANT_KERNELS)
    cache = config.data_dir() / "rpc-cache"
    cache.mkdir(parents=True, exist_ok=True)
    pool = Slots(slots, threads, str(cache))
    pool.start()
    asyncio.run(_serve(address, listening, policy, pool, per_peer))
    sys.stdout.flush()
    os._exit(0)  # ggml's server threads cannot be joined


async def _serve(address: ListenAddress, listening: socket.socket, policy: Policy,
                 pool: Slots, per_peer: int) -> None:
    gate = WorkerGate(policy, LocalAPI(config.tailscaled_socket()), pool, per_peer)
    await gate.machine.refresh()
    server = await asyncio.start_server(gate.handle, sock=listening)
    devices = ", ".join(f"{device.name} ({device.description}, {format_bytes(device.free)} free)"
                        for device in map(device_of, rpc.served_devices()))
    log.info("homeport %s worker listening on %s: reachable by %s; serving %s over ggml RPC "
             "protocol %d (%d slots, %d connections per peer)", __version__, address.endpoint,
             address.audience, devices, rpc.PROTOCOL_MAJOR, pool.count, per_peer)
    log.info("policy: %s, allowing %s", policy.source, describe(policy))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(gate))
    try:
        await stop.wait()
    finally:
        server.close()
        await gate.close()
        with contextlib.suppress(OSError):
            await server.wait_closed()
        log.info("worker stopped")


def _reload(gate: WorkerGate) -> None:
    path, required = config.policy_file()
    try:
        gate.policy = Policy.load(path, required)
    except ConfigError as exc:
        log.error("policy not reloaded, the previous one stays in force: %s", exc.message)
        return
    log.info("policy reloaded from %s: allows %s", gate.policy.source, describe(gate.policy))
