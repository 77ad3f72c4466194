"""``homeport edit``: the inline strategy, on a file (diff, confirm, atomic write) or a filter."""

from __future__ import annotations

import difflib
import sys

import click
from rich.console import Console
from rich.text import Text

from homeport.cli import err_console
from homeport.cli.options import endpoint_option
from homeport.cli.strategy import notify, open_for
from homeport.client.adapters import ADAPTERS, Adapter
from homeport.client.edit_file import EditFile, parse_target
from homeport.client.inline import Outcome, edit_text
from homeport.client.settings import ClientSettings
from homeport.errors import HomeportError


def _ask(adapter: Adapter, text: str, start: int, end: int, instruction: str,
         name: str) -> Outcome:
    waiting = f"asking {adapter.name} ({adapter.model})…"
    if err_console.is_terminal:
        with err_console.status(waiting):
            return edit_text(adapter, text, start, end, instruction, name)
    return edit_text(adapter, text, start, end, instruction, name)


def coloured_diff(before: str, after: str, name: str) -> Text:
    lines = difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                 f"a/{name}", f"b/{name}")
    text = Text()
    for line in lines:
        style = ("bold" if line.startswith(("+++", "---")) else "green" if line.startswith("+")
                 else "red" if line.startswith("-") else "cyan" if line.startswith("@@") else "")
        text.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n",
                    style=style)
    return text


@click.command("edit")
@click.argument("target")
@click.argument("instruction", nargs=-1, required=True)
@click.option("-a", "--adapter", type=click.Choice(ADAPTERS), default=None,
              help="Adapter to use (default: strategies.inline in config.toml, then "
                   "anthropic_haiku, or ollama without an Anthropic key).")
@click.option("-m", "--model", default=None, help="Model to use (default: the adapter's).")
@click.option("-y", "--yes", is_flag=True, help="Apply the change without asking.")
@click.option("--dry-run", is_flag=True, help="Only show the diff; change nothing.")
@endpoint_option
def edit(target: str, instruction: tuple[str, ...], adapter: str | None, model: str | None,
         yes: bool, dry_run: bool, endpoint: str | None) -> None:
    """Rewrite TARGET as INSTRUCTION says: FILE, FILE:LINE or FILE:START-END.

    Shows the change as a diff and asks before writing (the original is kept as FILE.bak).
    With TARGET `-` it filters stdin to stdout, e.g. in Neovim: :'<,'>!homeport edit - "..."
    """
    settings = ClientSettings()
    request = " ".join(instruction)
    if target == "-":
        _filter(settings, request, adapter, model, endpoint)
        return
    file = EditFile.open(parse_target(target))
    chosen = open_for("inline", settings, adapter, model, endpoint)
    try:
        outcome = _ask(chosen, file.text, file.start, file.end, request, str(file.path))
    finally:
        chosen.close()
    for note in outcome.notes:
        notify(note)
    if outcome.text == file.text:
        notify("the model changed nothing")
        return
    Console(highlight=False).print(coloured_diff(file.text, outcome.text, str(file.path)), end="")
    if dry_run:
        notify("dry run: nothing was written")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise HomeportError("not asking without a terminal: add --yes to apply the change, "
                                "or --dry-run to only show it")
        if not click.confirm(f"Apply to {file.path}?", default=False, err=True):
            notify("nothing was written")
            return
    backup = file.write(outcome.text)
    notify(f"wrote {file.path} (the original is in {backup})")


def _filter(settings: ClientSettings, request: str, adapter: str | None, model: str | None,
            endpoint: str | None) -> None:
    """stdin to stdout; on any failure the input comes out unchanged, so no editor loses text.

    Quiet: an editor's filter may read stderr into the buffer too, so only errors go there.
    """
    text = sys.stdin.read()
    try:
        chosen = open_for("inline", settings, adapter, model, endpoint, quiet=True)
        try:
            outcome = edit_text(chosen, text, 0, len(text.splitlines()), request, "stdin")
        finally:
            chosen.close()
    except HomeportError:
        sys.stdout.write(text)
        sys.stdout.flush()
        raise
    sys.stdout.write(outcome.text)
    sys.stdout.flush()
