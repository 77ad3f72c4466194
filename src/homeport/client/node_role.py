"""Which node an endpoint is, in words: this machine's or another's, a gateway or not.

``homeport doctor`` and ``homeport nvim`` talk to the local node unless told otherwise
(``OLLAMA_ENDPOINT``, ``--endpoint``, the config file); this says so, and what that node does.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx

from homeport.client.api import HomeportClient, ServerError, ServerUnreachableError
from homeport.endpoints import Endpoint, is_loopback_host

QUICK = httpx.Timeout(2.0, connect=0.5)  # a node on this machine answers at once or is not there


def where(url: str) -> str:
    host = urlsplit(url).hostname or ""
    return "the local node (this machine)" if is_loopback_host(host) else f"a node on {host}"


def role(node: dict[str, Any]) -> str:
    """What a homeport node does, from its ``/api/homeport/nodes`` answer."""
    count = len(node.get("nodes", []))
    routes = f"routes to {count} upstream{'' if count == 1 else 's'}"
    if node.get("engine", True) is False:
        return f"a gateway: runs no models itself (--no-engine), {routes}"
    if count:
        return f"a gateway: runs models here and {routes}"
    return "runs models here, no upstreams"


def describe(endpoint: Endpoint) -> str:
    """One line on the node at ``endpoint``, asked briefly; never raises for a missing server."""
    try:
        with HomeportClient(endpoint, timeout=QUICK) as client:
            if "homeport" not in client.version():
                return f"{where(endpoint.url)} is an Ollama server, not a homeport node"
            return f"{where(endpoint.url)}, {role(client.node())}"
    except ServerUnreachableError:
        return (f"nothing answers at {endpoint.url} now: start the local node with "
                "`homeport serve`" if is_loopback_host(urlsplit(endpoint.url).hostname or "")
                else f"nothing answers at {endpoint.url} now")
    except ServerError as exc:
        return f"{where(endpoint.url)}: {exc.message}"
