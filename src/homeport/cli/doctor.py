"""``homeport doctor``: check the endpoint and measure what the link carries."""

from __future__ import annotations

import dataclasses
import json
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from homeport.cli.options import endpoint_option
from homeport.client.doctor import Report, diagnose

MARKS = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[red]✗[/]"}


def _render(report: Report, console: Console) -> None:
    table = Table(box=None, show_header=False)
    table.add_column()
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for check in report.checks:
        table.add_row(MARKS[check.status], check.name, escape(check.detail))
    console.print(table)
    network = report.network
    if network is None or not network.sizes:
        return
    console.print(f"\n[bold]Models of other sizes over this link[/] (estimated from "
                  f"{escape(network.model)} at {network.server_tps:.1f} tokens/s, scaled by size)")
    sizes = Table(box=None, header_style="bold")
    for column in ("SIZE", "TOKENS/S", "FEEL"):
        sizes.add_column(column, justify="right" if column != "FEEL" else "left")
    for estimate in network.sizes:
        rate = estimate.tokens_per_second
        sizes.add_row(f"{estimate.billions:g}B", f"~{rate:.1f}" if rate >= 1 else f"~{rate:.2f}",
                      estimate.feel)
    console.print(sizes)


@click.command("doctor")
@endpoint_option
@click.option("--no-measure", is_flag=True, help="Skip the latency and streaming measurement.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(endpoint: str | None, no_measure: bool, as_json: bool) -> None:
    """Check the endpoint (reachable, version, access, models) and measure the link: latency,
    streaming throughput, and which model sizes would feel comfortable over it."""
    report = diagnose(endpoint, measure=not no_measure)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(report), indent=2))
    else:
        _render(report, Console(highlight=False))
    if report.failed:
        sys.exit(1)
