"""``homeport history``: the stored conversations (list, show, search, rm)."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape
from rich.table import Table

from homeport.client.chat import transcript_markdown
from homeport.client.history import History

console = Console(highlight=False)


@click.group("history", invoke_without_command=True)
@click.pass_context
def history(ctx: click.Context) -> None:
    """Your conversations: `homeport chat --continue` or `--id N` picks one up again."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_)


@history.command("list")
@click.option("-n", "--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="How many conversations to list, newest first.")
def list_(limit: int) -> None:
    """List recent conversations."""
    with History() as store:
        conversations = store.recent(limit)
    if not conversations:
        console.print("no conversations yet; start one with `homeport chat`", markup=False)
        return
    table = Table(box=None, header_style="bold")
    for column in ("ID", "TITLE", "ADAPTER", "MODEL", "TURNS", "UPDATED"):
        table.add_column(column)
    for item in conversations:
        table.add_row(str(item.id), escape(item.title), item.adapter, escape(item.model),
                      str(item.turn_count), item.updated_at.replace("T", " ").rstrip("Z"))
    console.print(table)


@history.command("show")
@click.argument("conversation_id", type=int)
def show(conversation_id: int) -> None:
    """Show one conversation (Markdown; plain text when piped)."""
    with History() as store:
        conversation = store.load(conversation_id)
    text = transcript_markdown(conversation.turns, conversation.system,
                               f"{conversation.id}: {conversation.title}")
    if sys.stdout.isatty():
        console.print(Markdown(text))
    else:
        sys.stdout.write(text)


@history.command("search")
@click.argument("text")
@click.option("-n", "--limit", type=click.IntRange(min=1), default=20, show_default=True)
def search(text: str, limit: int) -> None:
    """Find turns whose question or answer contains TEXT."""
    with History() as store:
        hits = store.search(text, limit)
    if not hits:
        console.print(f"nothing matches {text!r}", markup=False)
        return
    table = Table(box=None, header_style="bold")
    for column in ("ID", "WHEN", "TITLE", "MATCH"):
        table.add_column(column, overflow="fold")
    for hit in hits:
        table.add_row(str(hit.conversation_id), hit.created_at.replace("T", " ").rstrip("Z"),
                      escape(hit.title), escape(hit.snippet))
    console.print(table)


@history.command("rm")
@click.argument("conversation_id", type=int)
def rm(conversation_id: int) -> None:
    """Delete a conversation."""
    with History() as store:
        store.delete(conversation_id)
    console.print(f"deleted conversation {conversation_id}", markup=False)
