"""``homeport nvim``: CodeCompanion, configured for homeport's adapters, in one command."""

from __future__ import annotations

from pathlib import Path

import click

from homeport import endpoints
from homeport.cli.options import endpoint_option
from homeport.cli.strategy import notify
from homeport.client.codecompanion import MARKER, install_path, render
from homeport.client.node_role import describe
from homeport.client.settings import ClientSettings
from homeport.errors import HomeportError
from homeport.fileio import atomic_write


@click.command("nvim")
@click.option("--install", is_flag=True,
              help="Write it where Neovim loads it at startup (its plugin/ folder).")
@click.option("--path", "path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write it to this file instead (implies --install).")
@click.option("--force", is_flag=True, help="Overwrite a file that homeport did not write.")
@endpoint_option
def nvim(install: bool, path: Path | None, force: bool, endpoint: str | None) -> None:
    """Print a CodeCompanion configuration (Lua) for homeport, or install it.

    It defines the adapters anthropic, anthropic_opus, anthropic_haiku and ollama (the URL from
    OLLAMA_ENDPOINT at each request), the chat and inline defaults from config.toml, and
    <leader>cll to open a chat with ollama. Your own Neovim files are left alone.
    """
    lua = render(ClientSettings(), endpoint)
    if not install and path is None:
        click.echo(lua, nl=False)
        return
    target = path or install_path()
    if target.exists() and not force and not target.read_text(errors="replace").startswith(MARKER):
        raise HomeportError(f"{target} exists and was not written by homeport; use --force to "
                            "replace it, or --path to write elsewhere")
    atomic_write(target, lua.encode())
    click.echo(f"wrote {target}")
    # The file reads OLLAMA_ENDPOINT in Neovim; this default is what it uses when that is unset.
    # Asked without the token: resolving a cmd: reference here could prompt for a passphrase.
    url, source = endpoints.endpoint_url(endpoint, environment=False)
    notify(f"The ollama adapter talks to $OLLAMA_ENDPOINT when it is set in Neovim, else to {url} "
           f"(from {source}): {describe(endpoints.Endpoint(url, source))}.")
    notify("Neovim loads it at startup. If you also call require('codecompanion').setup() "
           "(e.g. lazy.nvim's opts), the later call wins: merge the two or drop yours.")
