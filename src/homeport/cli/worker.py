"""``homeport worker``: lend this machine's devices to a homeport server over ggml's RPC."""

from __future__ import annotations

import click

from homeport.worker.listen import DEFAULT_PORT

MAX_SLOTS = 16
MAX_PER_PEER = 256
# A model server opens a few short connections while it loads a model and keeps one per device
# while the model stays loaded: 8 leaves room for a few models at once, and no more.
MAX_CONNECTIONS_PER_PEER = 8


@click.command()
@click.option("--listen", "listen", default=None, metavar="HOST:PORT",
              help=f"Where to listen: this machine's tailnet IPv4 address (the default, port "
                   f"{DEFAULT_PORT}) or 127.0.0.1; wider addresses are refused.")
@click.option("--slots", type=click.IntRange(1, MAX_SLOTS), default=4, show_default=True,
              help="Connections served at once (ggml's RPC server takes one at a time, so "
                   "this many run on loopback).")
@click.option("--threads", type=click.IntRange(0, 1024), default=0,
              help="CPU threads for a served CPU device (default 0: one per core).")
@click.option("--max-connections-per-peer", "per_peer", type=click.IntRange(1, MAX_PER_PEER),
              default=MAX_CONNECTIONS_PER_PEER, show_default=True,
              help="Connections one tailnet node may hold at once; more are closed unserved (a "
                   "server holds one per device of each loaded model, and a few while loading).")
def worker(listen: str | None, slots: int, threads: int, per_peer: int) -> None:
    """Serve this machine's GPUs (or its CPU) to a homeport server over ggml's RPC.

    The server names workers in HOMEPORT_RPC_WORKERS=host:port,... and places layers on their
    devices when a model does not fit at home. ggml's RPC has no authentication: the RPC servers
    listen on loopback only, behind a gate that admits a connection only when the policy file
    (HOMEPORT_POLICY) allows the tailnet node that opened it, asked of tailscaled per connection.
    """
    from homeport.engine.llama import default_threads
    from homeport.server import setup_logging
    from homeport.worker.listen import listen_address
    from homeport.worker.run import run_worker

    setup_logging()
    run_worker(listen_address(listen), slots, threads or default_threads(), per_peer)
