"""``homeport serve``: the model server."""

from __future__ import annotations

import logging

import click

from homeport import config


def _settings_help() -> str:
    lines = ["\b", "Environment:"]
    for names, _, description in config.describe_settings():
        lines.append(f"  {names}")
        lines.append(f"      {description}")
    return "\n".join(lines)


@click.command(epilog=_settings_help())
@click.option("--host", "host", default=None,
              help="Address to bind, [scheme://]host[:port] (overrides HOMEPORT_HOST/OLLAMA_HOST).")
def serve(host: str | None) -> None:
    """Start the model server (Ollama and OpenAI APIs on port 11434)."""
    from homeport.server import run_server

    address = config.parse_host(host) if host else config.bind_address()
    logging.getLogger(__name__).debug("binding %s", address)
    run_server(address)
