"""The ``homeport`` command: one click group, one module per group of subcommands, each imported
only when its command runs.

Only ``serve`` and ``worker`` import server code. Every other command talks to a server through
``homeport.client``, except ``token`` and ``audit``, which manage the server's own files on its
machine. Expected failures (``HomeportError``) print one line and exit 1; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from homeport import __version__
from homeport.errors import HomeportError

err_console = Console(stderr=True, highlight=False)


# Each command and where it lives, imported only when it runs (or help lists it): the server's
# start (``homeport serve``) pays for no client, REPL or renderer imports.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("homeport.cli.serve", "serve"),
    "run": ("homeport.cli.run", "run"),
    "list": ("homeport.cli.models", "list_"),
    "ps": ("homeport.cli.models", "ps"),
    "show": ("homeport.cli.models", "show"),
    "cp": ("homeport.cli.models", "cp"),
    "rm": ("homeport.cli.models", "rm"),
    "pull": ("homeport.cli.transfer", "pull"),
    "create": ("homeport.cli.transfer", "create"),
    "import": ("homeport.cli.transfer", "import_"),
    "chat": ("homeport.cli.chat", "chat"),
    "edit": ("homeport.cli.edit", "edit"),
    "history": ("homeport.cli.history", "history"),
    "config": ("homeport.cli.config_cmd", "config_cmd"),
    "nodes": ("homeport.cli.nodes", "nodes"),
    "worker": ("homeport.cli.worker", "worker"),
    "nvim": ("homeport.cli.nvim", "nvim"),
    "doctor": ("homeport.cli.doctor", "doctor"),
    "token": ("homeport.cli.token", "token"),
    "audit": ("homeport.cli.audit", "audit"),
}


class HomeportGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attribute = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command), cmd_name
        assert command.name == cmd_name, (command.name, cmd_name)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HomeportError as exc:
            err_console.print(f"[bold red]Error:[/] {escape(exc.message)}", markup=True,
                              soft_wrap=True)
            sys.exit(1)


@click.group(cls=HomeportGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="homeport")
def main() -> None:
    """Run language models on your home machine; use them from every machine on your tailnet."""
