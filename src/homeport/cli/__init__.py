"""The ``homeport`` command: one click group, one module per group of subcommands.

Only ``serve`` and ``worker`` import server code. Every other command talks to a server through
``homeport.client``, except ``token`` and ``audit``, which manage the server's own files on its
machine. Expected failures (``HomeportError``) print one line and exit 1; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from homeport import __version__
from homeport.errors import HomeportError

err_console = Console(stderr=True, highlight=False)


class HomeportGroup(click.Group):
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


def _register() -> None:
    from homeport.cli import (
        audit,
        chat,
        config_cmd,
        doctor,
        edit,
        history,
        models,
        nodes,
        nvim,
        run,
        serve,
        token,
        transfer,
        worker,
    )

    main.add_command(serve.serve)
    main.add_command(run.run)
    for command in [*models.commands, *transfer.commands]:
        main.add_command(command)
    main.add_command(chat.chat)
    main.add_command(edit.edit)
    main.add_command(history.history)
    main.add_command(config_cmd.config_cmd)
    main.add_command(nodes.nodes)
    main.add_command(nvim.nvim)
    main.add_command(doctor.doctor)
    main.add_command(token.token)
    main.add_command(audit.audit)
    main.add_command(worker.worker)


_register()
