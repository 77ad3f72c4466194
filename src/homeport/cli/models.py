"""Model commands that talk to a server: list, ps, show, cp, rm (``run`` has its own module)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from homeport.cli import err_console
from homeport.cli.options import client_for, endpoint_option
from homeport.humanize import format_bytes, format_duration

# Piped output is for scripts: full-width rows, never names cut to fit 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 1000)


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
    if not models:
        err_console.print("no models yet; pull one with `homeport pull NAME`", highlight=False)
        return
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "ID", "SIZE", "FAMILY", "PARAMS", "QUANT", "MODIFIED", "WHERE"):
        table.add_column(column)
    for model in models:
        details = model.get("details", {})
        nodes = model.get("homeport", {}).get("nodes", ["local"])  # an Ollama server: its own
        table.add_row(model["name"], model.get("digest", "")[:12],
                      format_bytes(model.get("size", 0)), details.get("family", ""),
                      details.get("parameter_size", ""), details.get("quantization_level", ""),
                      _ago(model.get("modified_at", "")), ", ".join(nodes))
    console.print(table)


def processor(size: int, size_vram: int) -> str:
    """Where a loaded model sits, as ``ollama ps`` says it: 100% CPU, 100% GPU or 37%/63% CPU/GPU."""
    if size_vram == 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size == 0:
        return "Unknown"
    cpu_percent = round((size - size_vram) / size * 100)
    return f"{cpu_percent}%/{100 - cpu_percent}% CPU/GPU"


def machines(model: dict[str, Any]) -> str:
    """How much of a model each machine holds ("local 35%, 100.64.0.7:50052 65%"); empty when it
    all sits here."""
    shares = model.get("homeport", {}).get("machines", [])
    total = sum(int(share.get("size", 0)) for share in shares)
    if total <= 0 or all(share.get("machine") == "local" for share in shares):
        return ""
    return ", ".join(f"{share.get('machine')} {round(int(share.get('size', 0)) / total * 100)}%"
                     for share in shares)


def _local_size(model: dict[str, Any]) -> int:
    """Bytes on this machine (CPU and GPUs): the whole size less what RPC workers hold."""
    size = int(model.get("size", 0))
    remote = sum(int(share.get("size", 0))
                 for share in model.get("homeport", {}).get("machines", [])
                 if share.get("machine") != "local")
    return max(size - remote, 0)


@click.command("ps")
@endpoint_option
def ps(endpoint: str | None) -> None:
    """Show the models loaded now (MACHINES: how much sits on each RPC worker)."""
    with client_for(endpoint) as client:
        models = client.running()
    split = [machines(model) for model in models]
    columns = ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "SLOTS", "UNTIL"]
    if any(split):
        columns.append("MACHINES")
    table = Table(box=None, header_style="bold")
    for column in columns:
        table.add_column(column)
    for model, where in zip(models, split, strict=True):
        slots = model.get("slots", {})
        size, size_vram = int(model.get("size", 0)), int(model.get("size_vram", 0))
        # PROCESSOR speaks of this machine, as ollama ps does; MACHINES of the rest.
        row = [model["name"], model.get("digest", "")[:12],
               format_bytes(size), processor(_local_size(model), size_vram),
               str(model.get("context_length", "")),
               f"{slots.get('busy', 0)}/{slots.get('total', 0)}" if slots else "",
               _until(model.get("expires_at", ""))]
        table.add_row(*row, *([where] if any(split) else []))
    console.print(table)


def _excerpt(text: str, lines: int = 3) -> str:
    kept = text.strip().splitlines()
    return "\n".join(kept[:lines] + (["..."] if len(kept) > lines else []))


@click.command("show")
@click.argument("model")
@click.option("--modelfile", is_flag=True, help="Print the Modelfile.")
@click.option("--template", is_flag=True, help="Print the chat template.")
@click.option("--parameters", is_flag=True, help="Print the parameters.")
@click.option("--system", is_flag=True, help="Print the system prompt.")
@click.option("--license", "license_", is_flag=True, help="Print the license.")
@endpoint_option
def show(model: str, modelfile: bool, template: bool, parameters: bool, system: bool,
         license_: bool, endpoint: str | None) -> None:
    """Show a model's details, parameters, template and license."""
    with client_for(endpoint) as client:
        info = client.show(model)
    for flag, key in ((modelfile, "modelfile"), (template, "template"),
                      (parameters, "parameters"), (system, "system"), (license_, "license")):
        if flag:
            click.echo(info.get(key, ""))
            return
    print_model_info(info)


def print_model_info(info: dict[str, Any]) -> None:
    """What ``homeport show`` prints: the details, then excerpts of the longer parts."""
    details = info.get("details", {})
    model_info = info.get("model_info", {})
    family = details.get("family", "")
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("architecture", str(model_info.get("general.architecture", family)))
    table.add_row("parameters", str(details.get("parameter_size", "")))
    table.add_row("context length", str(model_info.get(f"{family}.context_length", "")))
    table.add_row("embedding length", str(model_info.get(f"{family}.embedding_length", "")))
    table.add_row("quantization", str(details.get("quantization_level", "")))
    table.add_row("capabilities", ", ".join(info.get("capabilities", [])))
    console.print("[bold]Model[/]")
    console.print(table)
    for title, key in (("Parameters", "parameters"), ("System", "system"),
                       ("Template", "template"), ("License", "license")):
        if info.get(key):
            console.print(f"\n[bold]{title}[/]")
            text = info[key] if key == "parameters" else _excerpt(info[key])
            console.print(text, markup=False)


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
