"""Options and helpers the client commands share."""

from __future__ import annotations

import click

from homeport.client.api import HomeportClient
from homeport.endpoints import resolve_endpoint

endpoint_option = click.option(
    "--endpoint", default=None, metavar="URL",
    help="Server to talk to (default: OLLAMA_ENDPOINT, OLLAMA_HOST, then localhost:11434).")
insecure_option = click.option(
    "--insecure", is_flag=True, help="Allow pulling from a registry on plain http.")


def client_for(endpoint: str | None) -> HomeportClient:
    return HomeportClient(resolve_endpoint(endpoint))
