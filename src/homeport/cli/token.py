"""``homeport token``: bearer tokens for callers outside the tailnet (scripts, CI, other machines).

Run on the server's machine, as the server's user: tokens live in its data folder, and the running
server notices changes at once. ``create`` prints the token alone on stdout (so
``TOKEN=$(homeport token create ci)`` works) and how to use it on stderr; only its hash is kept.
"""

from __future__ import annotations

from datetime import UTC, datetime

import click
from rich.console import Console
from rich.table import Table

from homeport import config
from homeport.durations import parse_span
from homeport.humanize import format_duration
from homeport.net.tokens import Token, TokenStore

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def _store() -> TokenStore:
    return TokenStore(config.tokens_file())


def _globs(values: tuple[str, ...]) -> tuple[str, ...]:
    globs = tuple(part.strip() for value in values for part in value.split(",") if part.strip())
    return globs or ("*",)


@click.group("token")
def token() -> None:
    """Create, list and revoke tokens for callers outside the tailnet."""


@token.command("create")
@click.argument("name")
@click.option("--models", "models", multiple=True, metavar="GLOB",
              help='Models it may use, e.g. "llama3*" (repeat or separate with commas; '
                   "default: all).")
@click.option("--admin", is_flag=True, help="May also manage models (pull, create, copy, delete).")
@click.option("--expires", metavar="SPAN", default=None,
              help="Lifetime such as 30d, 2w or 12h (default: until revoked).")
def create(name: str, models: tuple[str, ...], admin: bool, expires: str | None) -> None:
    """Create a token named NAME and print it (once: only its hash is stored)."""
    lifetime = None
    if expires:
        try:
            lifetime = parse_span(expires)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--expires") from None
    secret, created = _store().create(name, _globs(models), admin, lifetime)
    click.echo(secret)
    until = f"until {created.expires:%Y-%m-%d %H:%M} UTC" if created.expires else "until revoked"
    err_console.print(
        f"Token [bold]{name}[/] created ({', '.join(created.models)}"
        f"{'; admin' if admin else ''}; valid {until}). It is shown only now: keep it secret.\n"
        "Send it as [bold]Authorization: Bearer <token>[/]:\n"
        "  curl: -H 'Authorization: Bearer <token>'\n"
        "  ollama (Python): ollama.Client(host=URL, headers={'Authorization': 'Bearer <token>'})\n"
        "  CodeCompanion: headers = { Authorization = 'Bearer <token>' } in the adapter\n"
        "  homeport commands: HOMEPORT_TOKEN=<token>")


def _expiry(item: Token, now: datetime) -> str:
    if item.expires is None:
        return "never"
    left = (item.expires - now).total_seconds()
    return f"in {format_duration(left)}" if left > 0 else f"{item.expires:%Y-%m-%d}"


@token.command("list")
def list_() -> None:
    """List tokens (names and rights, never the tokens themselves)."""
    tokens = _store().tokens()
    if not tokens:
        err_console.print("No tokens yet; create one with `homeport token create NAME`.")
        return
    now = datetime.now(UTC)
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "MODELS", "ADMIN", "CREATED", "EXPIRES", "STATE"):
        table.add_column(column)
    styles = {"active": "green", "expired": "yellow", "revoked": "red"}
    for item in sorted(tokens, key=lambda entry: entry.created):
        state = item.state(now)
        table.add_row(item.name, ", ".join(item.models), "yes" if item.admin else "",
                      f"{item.created:%Y-%m-%d %H:%M}", _expiry(item, now),
                      f"[{styles[state]}]{state}[/]")
    console.print(table)


@token.command("revoke")
@click.argument("name")
def revoke(name: str) -> None:
    """Revoke the token named NAME; the server refuses it from the next request on."""
    _store().revoke(name)
    err_console.print(f"Token [bold]{name}[/] revoked.")
