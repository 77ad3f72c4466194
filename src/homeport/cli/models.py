"""Model commands that talk to a server: list, ps, show, run, cp, rm."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from homeport.client.api import HomeportClient
from homeport.config import resolve_endpoint
from homeport.humanize import format_bytes, format_duration

console = Console(highlight=False)

endpoint_option = click.option(
    "--endpoint", default=None, metavar="URL",
    help="Server to talk to (default: OLLAMA_ENDPOINT, OLLAMA_HOST, then localhost:11434).")


def client_for(endpoint: str | None) -> HomeportClient:
    return HomeportClient(resolve_endpoint(endpoint))


def _ago(timestamp: str) -> str:
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return timestamp
    seconds = (datetime.now(UTC) - moment).total_seconds()
    return "just now" if seconds < 60 else f"{format_duration(seconds)} ago"


def _until(timestamp: str) -> str:
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return timestamp
    seconds = (moment - datetime.now(UTC)).total_seconds()
    if seconds > 100 * 365 * 86400:
        return "Forever"
    return "Stopping..." if seconds <= 0 else f"{format_duration(seconds)} from now"


@click.command("list")
@endpoint_option
def list_(endpoint: str | None) -> None:
    """List the models the server has."""
    with client_for(endpoint) as client:
        models = client.list_models()
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "ID", "SIZE", "FAMILY", "PARAMS", "QUANT", "MODIFIED"):
        table.add_column(column)
    for model in models:
        details = model.get("details", {})
        table.add_row(model["name"], model.get("digest", "")[:12],
                      format_bytes(model.get("size", 0)), details.get("family", ""),
                      details.get("parameter_size", ""), details.get("quantization_level", ""),
                      _ago(model.get("modified_at", "")))
    console.print(table)


@click.command("ps")
@endpoint_option
def ps(endpoint: str | None) -> None:
    """Show the models loaded now."""
    with client_for(endpoint) as client:
        models = client.running()
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "ID", "SIZE", "CONTEXT", "SLOTS", "UNTIL"):
        table.add_column(column)
    for model in models:
        slots = model.get("slots", {})
        table.add_row(model["name"], model.get("digest", "")[:12],
                      format_bytes(model.get("size", 0)), str(model.get("context_length", "")),
                      f"{slots.get('busy', 0)}/{slots.get('total', 0)}" if slots else "",
                      _until(model.get("expires_at", "")))
    console.print(table)


@click.command("show")
@click.argument("model")
@click.option("--modelfile", is_flag=True, help="Print the Modelfile.")
@click.option("--template", is_flag=True, help="Print the chat template.")
@click.option("--parameters", is_flag=True, help="Print the parameters.")
@click.option("--license", "license_", is_flag=True, help="Print the license.")
@endpoint_option
def show(model: str, modelfile: bool, template: bool, parameters: bool, license_: bool,
         endpoint: str | None) -> None:
    """Show a model's details, parameters, template and license."""
    with client_for(endpoint) as client:
        info = client.show(model)
    for flag, key in ((modelfile, "modelfile"), (template, "template"),
                      (parameters, "parameters"), (license_, "license")):
        if flag:
            click.echo(info.get(key, ""))
            return
    details = info.get("details", {})
    model_info = info.get("model_info", {})
    family = details.get("family", "")
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("architecture", str(model_info.get("general.architecture", family)))
    table.add_row("parameters", str(details.get("parameter_size", "")))
    table.add_row("context length", str(model_info.get(f"{family}.context_length", "")))
    table.add_row("quantization", str(details.get("quantization_level", "")))
    table.add_row("capabilities", ", ".join(info.get("capabilities", [])))
    console.print("[bold]Model[/]")
    console.print(table)
    if info.get("parameters"):
        console.print("\n[bold]Parameters[/]")
        console.print(info["parameters"], markup=False)
    if info.get("license"):
        console.print("\n[bold]License[/]")
        console.print(info["license"].strip().splitlines()[0], markup=False)


def _stream_answer(client: HomeportClient, model: str, messages: list[dict[str, Any]]) -> str:
    """Print the answer as it streams; return its text."""
    parts: list[str] = []
    for chunk in client.chat(model, messages):
        text = chunk.get("message", {}).get("content", "")
        if text:
            parts.append(text)
            sys.stdout.write(text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(parts)


@click.command("run")
@click.argument("model")
@click.argument("prompt", nargs=-1)
@endpoint_option
def run(model: str, prompt: tuple[str, ...], endpoint: str | None) -> None:
    """Chat with a model: one answer for PROMPT, or an interactive session without one."""
    with client_for(endpoint) as client:
        text = " ".join(prompt)
        if not text and not sys.stdin.isatty():
            text = sys.stdin.read()
        if text:
            _stream_answer(client, model, [{"role": "user", "content": text}])
            return
        _interactive(client, model)


def _interactive(client: HomeportClient, model: str) -> None:
    from prompt_toolkit import PromptSession

    client.show(model)  # fail early, with the server's message, if the model is missing
    session: PromptSession[str] = PromptSession()
    messages: list[dict[str, Any]] = []
    console.print("[dim]Send a message (/bye to quit, /clear to forget the conversation)[/]")
    while True:
        try:
            line = session.prompt(">>> ")
        except (EOFError, KeyboardInterrupt):
            break
        if line.strip() in ("/bye", "/exit"):
            break
        if line.strip() == "/clear":
            messages.clear()
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        try:
            answer = _stream_answer(client, model, messages)
        except KeyboardInterrupt:
            messages.pop()
            sys.stdout.write("\n")
            continue
        messages.append({"role": "assistant", "content": answer})


@click.command("cp")
@click.argument("source")
@click.argument("destination")
@endpoint_option
def cp(source: str, destination: str, endpoint: str | None) -> None:
    """Copy a model to a new name."""
    with client_for(endpoint) as client:
        client.copy(source, destination)
    console.print(f"copied '{source}' to '{destination}'")


@click.command("rm")
@click.argument("models", nargs=-1, required=True)
@endpoint_option
def rm(models: tuple[str, ...], endpoint: str | None) -> None:
    """Remove models."""
    with client_for(endpoint) as client:
        for model in models:
            client.delete(model)
            console.print(f"deleted '{model}'")


commands = [list_, ps, show, run, cp, rm]
