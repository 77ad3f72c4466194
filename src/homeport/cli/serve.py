"""``homeport serve``: the model server."""

from __future__ import annotations

import logging

import click

from homeport import config, endpoints


def _settings_help() -> str:
    lines = ["\b", "Environment:"]
    for names, _, description in config.describe_settings():
        lines.append(f"  {names}")
        lines.append(f"      {description}")
    return "\n".join(lines)


@click.command(epilog=_settings_help())
@click.option("--host", "host", default=None,
              help="Address to bind, [scheme://]host[:port] (overrides HOMEPORT_HOST/OLLAMA_HOST).")
@click.option("--tailnet", is_flag=True,
              help="Listen on this machine's tailnet addresses (and loopback), waiting for the "
                   "tailnet to come up; only the port of --host is used.")
@click.option("--expose", is_flag=True,
              help="Allow an address beyond loopback and the tailnet (such as 0.0.0.0); needs a "
                   "token or a policy file first.")
@click.option("--upstream", "upstreams", multiple=True, metavar="URL",
              help="Another homeport or Ollama server whose models this one lists and routes to "
                   "(repeatable; also HOMEPORT_UPSTREAMS and [[upstream]] in config.toml).")
@click.option("--no-engine", is_flag=True,
              help="A gateway: serve no models here (nor the bundled one), only forward to the "
                   "upstreams.")
def serve(host: str | None, tailnet: bool, expose: bool, upstreams: tuple[str, ...],
          no_engine: bool) -> None:
    """Start the model server (Ollama and OpenAI APIs on port 11434).

    It listens on loopback unless told otherwise, and always says who can reach it. Callers other
    than this machine are identified by tailscaled (whois) or by a token, and allowed only what
    the policy file grants them.
    """
    from homeport.server import run_server

    address = endpoints.parse_host(host) if host else endpoints.bind_address()
    logging.getLogger(__name__).debug("binding %s", address)
    run_server(address, tailnet=tailnet, expose=expose, upstream_urls=upstreams,
               no_engine=no_engine)
