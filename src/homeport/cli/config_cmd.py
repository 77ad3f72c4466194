"""``homeport config``: the effective client settings and where each came from."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from homeport import config
from homeport.cli.options import endpoint_option
from homeport.client.settings import ClientSettings, describe

console = Console(highlight=False)

TEMPLATE = """\
# homeport client settings. Every value is optional; `homeport config` shows what is in effect.
# Secrets are references only: "env:NAME" (an environment variable) or "cmd:COMMAND" (its output).

# The server (after --endpoint, OLLAMA_ENDPOINT and OLLAMA_HOST):
# endpoint = "http://100.101.102.103:11434"
# A token for it (HOMEPORT_TOKEN wins over this):
# token = "env:HOMEPORT_TOKEN"

# The adapter each strategy uses (anthropic, anthropic_opus, anthropic_haiku or ollama):
# [strategies.chat]
# adapter = "anthropic_haiku"
# [strategies.inline]
# adapter = "ollama"
# model = "qwen2.5-coder:7b"

# [adapters.ollama]
# model = "mistral"          # a missing default falls back, with a notice, to what the server has
# num_ctx = 16384
# keep_alive = "30m"
# temperature = 0.7
# max_tokens = 2048          # the longest answer (default: no limit)

# [adapters.anthropic]       # likewise [adapters.anthropic_opus] and [adapters.anthropic_haiku]
# model = "claude-sonnet-5-5"
# api_key = "cmd:pass show anthropic"   # default: $ANTHROPIC_API_KEY
# max_tokens = 4096
"""


@click.group("config", invoke_without_command=True)
@endpoint_option
@click.option("--json", "as_json", is_flag=True, help="Print the settings as JSON.")
@click.pass_context
def config_cmd(ctx: click.Context, endpoint: str | None, as_json: bool) -> None:
    """Show the effective client settings and the source of each (flag, variable, file)."""
    if ctx.invoked_subcommand is not None:
        return
    rows = describe(ClientSettings(), endpoint)
    if as_json:
        click.echo(json.dumps([{"setting": name, "value": value, "source": source}
                               for name, value, source in rows], indent=2))
        return
    table = Table(box=None, header_style="bold")
    for column in ("SETTING", "VALUE", "SOURCE"):
        table.add_column(column, overflow="fold")
    for name, value, source in rows:
        style = "red" if value == "error" else ""
        table.add_row(name, escape(value), escape(source), style=style)
    console.print(table)


@config_cmd.command("path")
def path() -> None:
    """Print where the config file is (or would be)."""
    click.echo(str(config.config_file()))


@config_cmd.command("init")
def init() -> None:
    """Write a commented config file, unless one exists."""
    file = config.config_file()
    if file.exists():
        raise click.ClickException(f"{file} exists already; edit it instead")
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(TEMPLATE)
    click.echo(f"wrote {file}")
