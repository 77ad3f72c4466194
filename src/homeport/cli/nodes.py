"""``homeport nodes``: the other machines this node routes to, and how each is doing, and the RPC
workers its models may be placed on."""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from homeport.cli import err_console
from homeport.cli.models import _ago, console
from homeport.cli.options import client_for, endpoint_option


def _state(node: dict[str, Any]) -> str:
    if node.get("state") == "up":
        return "[green]up[/]"
    if node.get("state") == "self":
        return "this node (skipped)"
    if node.get("state") != "down":
        return "not asked yet"
    since = f" since {_ago(node['down_since'])}" if node.get("down_since") else ""
    error = f": {node['last_error']}" if node.get("last_error") else ""
    return f"[red]down[/]{escape(since + error)}"


def _worker(worker: dict[str, Any]) -> str:
    where = f"{worker['peer']}, found on the tailnet" if worker.get("peer") else "configured"
    return escape(f"{worker.get('endpoint', '')} ({where})")


@click.command("nodes")
@endpoint_option
def nodes(endpoint: str | None) -> None:
    """Show the server's upstreams (name, URL, kind, state, round trip, models and load) and its
    RPC workers."""
    with client_for(endpoint) as client:
        node = client.node()
    found: list[dict[str, Any]] = list(node.get("nodes", []))
    workers: list[dict[str, Any]] = list(node.get("workers", []))
    if workers:
        console.print("RPC workers: " + ", ".join(_worker(worker) for worker in workers),
                      highlight=False)
    if not found:
        err_console.print("no upstreams; add one with `homeport serve --upstream URL`",
                          highlight=False)
        return
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "URL", "KIND", "STATE", "ROUND TRIP", "MODELS", "LOAD"):
        table.add_column(column, overflow="fold")
    for node in found:
        round_trip = node.get("round_trip_ms")
        table.add_row(escape(str(node["name"])), escape(str(node["url"])), str(node["kind"]),
                      _state(node), f"{round_trip:.1f} ms" if round_trip is not None else "",
                      str(node.get("models", 0)), str(node.get("load", node.get("in_flight", 0))))
    console.print(table)
