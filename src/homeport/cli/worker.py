"""``homeport worker``: lend this machine's devices to a homeport server over ggml's RPC."""

from __future__ import annotations

import click

from homeport.worker.listen import DEFAULT_PORT

MAX_SLOTS = 16


@click.command()
@click.option("--listen", "listen", default=None, metavar="HOST:PORT",
              help=f"Where to listen: this machine's tailnet IPv4 address (the default, port "
                   f"{DEFAULT_PORT}) or 127.0.0.1; wider addresses are refused.")
@click.option("--slots", type=click.IntRange(1, MAX_SLOTS), default=4, show_default=True,
              help="Connections served at once (ggml's RPC server takes one at a time, so "
                   "this many run on loopback).")
@click.option("--threads", type=click.IntRange(0, 1024), default=0,
              help="CPU threads for a served CPU device (default 0: one per core).")
def worker(listen: str | None, slots: int, threads: int) -> None:
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
    run_worker(listen_address(listen), slots, threads or default_threads())
