"""Commands that move models onto the server: pull, create (from a Modelfile) and import (a GGUF).

Progress is drawn with rich on stderr, one bar per layer, the way ``ollama pull`` draws it; plain
status lines (``verifying sha256 digest``, ``success``) are printed above the bars.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from homeport.cli import err_console
from homeport.cli.options import client_for, endpoint_option, insecure_option
from homeport.client.api import HomeportClient
from homeport.humanize import format_bytes
from homeport.store.modelfile import Modelfile, parse_modelfile

CHUNK = 1024 * 1024


def _bars() -> Progress:
    """Live bars at a terminal; nothing (callers print plain lines) anywhere else."""
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=err_console,
                    disable=not err_console.is_terminal)


def _say(bars: Progress, text: str) -> None:
    """A status line above the bars (or alone): never wrapped, never styled."""
    bars.console.print(text, markup=False, highlight=False, soft_wrap=True)


def show_progress(lines: Iterator[dict[str, Any]]) -> None:
    """Render a pull or create stream until ``success`` (errors raise as ServerError): live bars
    at a terminal, one plain line per finished layer and status otherwise (logs, scripts)."""
    with _bars() as bars:
        tasks: dict[str, TaskID] = {}
        printed: set[str] = set()
        for line in lines:
            status = str(line.get("status", ""))
            digest, total = line.get("digest"), line.get("total")
            if digest and total:
                if digest not in tasks:
                    tasks[digest] = bars.add_task(status, total=total)
                completed = line.get("completed", 0)
                bars.update(tasks[digest], completed=completed)
                if bars.disable and completed >= total and digest not in printed:
                    printed.add(digest)
                    _say(bars, f"{status} {format_bytes(total)}")
            elif status:
                _say(bars, status)


def pull_with_progress(client: HomeportClient, model: str, insecure: bool) -> None:
    show_progress(client.pull(model, insecure=insecure))


@click.command("pull")
@click.argument("model")
@insecure_option
@endpoint_option
def pull(model: str, insecure: bool, endpoint: str | None) -> None:
    """Pull a model from a registry (registry.ollama.ai, hf.co, or your own)."""
    with client_for(endpoint) as client:
        pull_with_progress(client, model, insecure)


# --- create and import ---------------------------------------------------------------------------


def _file_chunks(path: Path, bars: Progress, task: TaskID) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            bars.advance(task, len(chunk))
            yield chunk


def upload_file(client: HomeportClient, path: Path) -> str:
    """Send a local file to the server's blob store (unless it has it); return its digest."""
    size = path.stat().st_size
    with _bars() as bars:
        hashing = bars.add_task(f"hashing {path.name}", total=size)
        hasher = hashlib.sha256()
        for chunk in _file_chunks(path, bars, hashing):
            hasher.update(chunk)
        digest = f"sha256:{hasher.hexdigest()}"
        if client.has_blob(digest):
            _say(bars, f"using existing layer {digest}")
            return digest
        copying = bars.add_task(f"copying {path.name}", total=size)
        client.upload_blob(digest, _file_chunks(path, bars, copying), size)
        if bars.disable:
            _say(bars, f"copied {path.name} {format_bytes(size)}")
    return digest


def _local_path(source: str, base_dir: Path) -> Path:
    """A Modelfile's path as written (``~`` expanded), relative to the Modelfile's folder."""
    path = Path(source).expanduser()
    return path if path.is_absolute() else base_dir / path


def _refuse_folder(path: Path, source: str) -> None:
    if path.is_dir():
        raise click.ClickException(
            f"{source} is a folder; homeport creates models from one GGUF file (convert "
            "safetensors with llama.cpp's convert_hf_to_gguf.py first)")


def _source_fields(client: HomeportClient, source: str, base_dir: Path) -> dict[str, Any]:
    """``from`` for a model name, or ``files`` for a GGUF path (uploaded first)."""
    path = _local_path(source, base_dir)
    _refuse_folder(path, source)
    if path.is_file():
        return {"files": {path.name: upload_file(client, path)}}
    if source.startswith((".", "/", "~")) or source.endswith(".gguf"):
        raise click.ClickException(f"no such file: {source}")
    return {"from": source}


def _draft_file(draft: str, from_: str, base_dir: Path) -> Path:
    """The GGUF file a DRAFT line names: a local file, as Ollama takes it (not a model name),
    and not the file FROM names. Checked before anything is uploaded."""
    path = _local_path(draft, base_dir)
    _refuse_folder(path, draft)
    if not path.is_file():
        raise click.ClickException(f"no such file: {draft} (DRAFT takes a GGUF file's path)")
    source = _local_path(from_, base_dir)
    if source.is_file() and source.resolve() == path.resolve():
        raise click.ClickException(f"DRAFT must not reference the same local path as FROM: {draft}")
    return path


def create_from(client: HomeportClient, model: str, modelfile: Modelfile, base_dir: Path,
                quantize: str | None = None) -> None:
    if modelfile.adapters:
        raise click.ClickException("ADAPTER is not supported by homeport")
    draft = None if modelfile.draft is None else _draft_file(modelfile.draft, modelfile.from_,
                                                             base_dir)
    fields = _source_fields(client, modelfile.from_, base_dir)
    if draft is not None:
        fields["draft_files"] = {draft.name: upload_file(client, draft)}
    extras: dict[str, Any] = {
        "template": modelfile.template, "system": modelfile.system,
        "parameters": modelfile.parameters or None, "license": modelfile.license or None,
        "messages": modelfile.messages or None, "quantize": quantize,
    }
    fields.update({key: value for key, value in extras.items() if value is not None})
    show_progress(client.create(model, **fields))


@click.command("create")
@click.argument("model")
@click.option("-f", "--file", "modelfile_path", default="Modelfile", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The Modelfile to read.")
@click.option("-q", "--quantize", default=None, help="Refused: homeport does not quantize.")
@endpoint_option
def create(model: str, modelfile_path: Path, quantize: str | None, endpoint: str | None) -> None:
    """Create a model from a Modelfile (FROM a GGUF file or another model, DRAFT a GGUF file)."""
    try:
        text = modelfile_path.read_text()
    except OSError as exc:
        raise click.ClickException(f"cannot read {modelfile_path}: {exc.strerror}") from None
    modelfile = parse_modelfile(text)
    with client_for(endpoint) as client:
        create_from(client, model, modelfile, modelfile_path.resolve().parent, quantize)


@click.command("import")
@click.argument("gguf_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", "model", required=True, help="The name to give the model.")
@click.option("--system", default=None, help="A system prompt to store with it.")
@click.option("--parameter", "parameters", multiple=True, metavar="KEY=VALUE",
              help="A default option, e.g. num_ctx=8192 (repeatable).")
@endpoint_option
def import_(gguf_file: Path, model: str, system: str | None, parameters: tuple[str, ...],
            endpoint: str | None) -> None:
    """Import a GGUF file you downloaded (from Hugging Face, say) as a model."""
    modelfile = Modelfile(from_=str(gguf_file.resolve()), system=system)
    for item in parameters:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--parameter")
        modelfile.add_parameter(key, value)
    with client_for(endpoint) as client:
        create_from(client, model, modelfile, Path.cwd())
    err_console.print(f"imported {gguf_file.name} as '{model}'", highlight=False)
