"""``homeport audit``: who used the server, which models, and how much, from its audit log."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import click
from rich.console import Console
from rich.table import Table

from homeport import config
from homeport.durations import parse_span
from homeport.net.audit import read_entries, summarise

console = Console(highlight=False)


@click.command("audit")
@click.option("--since", metavar="SPAN", default=None,
              help="Only the last SPAN, such as 24h or 7d (default: everything kept).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def audit(since: str | None, as_json: bool) -> None:
    """Summarise the audit log: requests, refusals and tokens per identity and model."""
    start = None
    if since:
        try:
            start = datetime.now(UTC) - timedelta(seconds=parse_span(since))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--since") from None
    rows = summarise(read_entries(config.audit_dir(), start))
    if as_json:
        click.echo(json.dumps([asdict(row) for row in rows], indent=2))
        return
    if not rows:
        console.print("No requests in the audit log" + (f" in the last {since}." if since else "."))
        return
    table = Table(box=None, header_style="bold")
    for column in ("IDENTITY", "MODEL", "REQUESTS", "DENIED", "FAILED", "TOKENS IN",
                   "TOKENS OUT", "LAST SEEN"):
        numeric = column.startswith(("REQ", "DEN", "FAI", "TOK"))
        table.add_column(column, justify="right" if numeric else "left",
                         no_wrap=column == "LAST SEEN")
    for row in rows:
        table.add_row(row.identity, row.model or "-", str(row.requests),
                      str(row.denied) if row.denied else "", str(row.failed) if row.failed else "",
                      f"{row.tokens_in:,}", f"{row.tokens_out:,}", row.last[:16].replace("T", " "))
    total = sum(row.requests for row in rows)
    console.print(table)
    console.print(f"[dim]{total} requests{f' in the last {since}' if since else ''}; "
                  f"denied = refused with 401, 403 or 429[/]")
