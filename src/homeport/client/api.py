"""A typed HTTP client for a homeport (or Ollama) server, used by every CLI command but ``serve``.

Errors are ``ServerError`` (the server answered with an error status: its status and message) or
``ServerUnreachableError`` (nothing answered at the endpoint, naming the endpoint and where its
address came from). Both carry a one-line message meant for people.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import httpx

from homeport.config import config_file
from homeport.endpoints import Endpoint, resolve_endpoint
from homeport.errors import HomeportError

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=None, write=60.0, pool=5.0)


class ServerError(HomeportError):
    """The server answered with an error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ServerUnreachableError(HomeportError):
    def __init__(self, endpoint: Endpoint, reason: str) -> None:
        where = f" (from {endpoint.source})" if endpoint.source != "default" else ""
        super().__init__(
            f"could not reach a server at {endpoint.url}{where}: {reason}; "
            "is `homeport serve` running there?")
        self.endpoint = endpoint


def access_hint(status: int, endpoint: Endpoint) -> str:
    """What to do about a 401 or 403 from the server ("" for other statuses)."""
    if status == 401 and endpoint.token_source == "not set":
        return ("; this server wants a token: set HOMEPORT_TOKEN, or token = \"env:NAME\" in "
                f"{config_file()} (its owner creates one with `homeport token create NAME`)")
    if status == 401:
        return (f"; the token from {endpoint.token_source} was refused: check it or ask the "
                "server's owner for a new one (`homeport token create NAME`)")
    if status == 403:
        return ("; the server's policy does not allow this: ask its owner to add you (or this "
                "model) to its policy")
    return ""


def refused(status: int, message: str, endpoint: Endpoint) -> str:
    """One line for an error status from the server, with a hint for 401 and 403."""
    hint = access_hint(status, endpoint)
    if not hint:
        return message
    return f"the server at {endpoint.url} answered {status}: {message}{hint}"


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or f"HTTP {response.status_code}"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(error) if error else f"HTTP {response.status_code}"


class HomeportClient:
    """Talks to one server; ``headers`` carry a bearer token when one is configured."""

    def __init__(self, endpoint: Endpoint | None = None,
                 headers: dict[str, str] | None = None,
                 timeout: httpx.Timeout = DEFAULT_TIMEOUT) -> None:
        self.endpoint = endpoint or resolve_endpoint()
        merged = {**self.endpoint.headers, **(headers or {})}
        self._http = httpx.Client(base_url=self.endpoint.url, headers=merged, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HomeportClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachableError(self.endpoint, str(exc) or type(exc).__name__) from None

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 **kwargs: Any) -> httpx.Response:
        response = self._send(method, path, json=body, **kwargs)
        if response.status_code >= 400:
            raise self._error(response)
        return response

    def _error(self, response: httpx.Response) -> ServerError:
        status = response.status_code
        return ServerError(status, refused(status, _error_message(response), self.endpoint))

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._request(method, path, body)
        return response.json() if response.content else {}

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST and yield each NDJSON object; an ``{"error"}`` line becomes a ServerError."""
        return (item for item, _ in self.stream_sized(path, body))

    def stream_sized(self, path: str, body: dict[str, Any]
                     ) -> Iterator[tuple[dict[str, Any], int]]:
        """``stream``, each object with the size in bytes of its line (newline included)."""
        try:
            with self._http.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._error(response)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    if isinstance(item, dict) and "error" in item:
                        raise ServerError(500, str(item["error"]))
                    yield item, len(line.encode()) + 1
        except httpx.TransportError as exc:
            raise ServerUnreachableError(self.endpoint, str(exc) or type(exc).__name__) from None

    # --- the API ---------------------------------------------------------------------------------

    def version(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/api/version")
        return result

    def list_models(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/api/tags").get("models", []))

    def nodes(self) -> list[dict[str, Any]]:
        """The server's upstreams and their state (homeport only: Ollama has no such route)."""
        return list(self.node().get("nodes", []))

    def node(self, recheck_workers: bool = False) -> dict[str, Any]:
        """The node's upstreams (``nodes``), whether it runs models itself (``engine``) and its RPC
        workers (``workers``), those last seen not accepting probed again first where asked."""
        path = "/api/homeport/nodes" + ("?recheck=workers" if recheck_workers else "")
        result: dict[str, Any] = self._json("GET", path)
        return result

    def running(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/api/ps").get("models", []))

    def show(self, model: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", "/api/show", {"model": model})
        return result

    def pull(self, model: str, insecure: bool = False) -> Iterator[dict[str, Any]]:
        """Pull ``model`` from its registry, yielding the server's progress lines."""
        return self.stream("/api/pull", {"model": model, "insecure": insecure, "stream": True})

    def create(self, model: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """Create ``model`` (``from`` or ``files``, template, system, ...), yielding progress."""
        return self.stream("/api/create", {"model": model, **fields, "stream": True})

    def has_blob(self, digest: str) -> bool:
        response = self._send("HEAD", f"/api/blobs/{digest}")
        if response.status_code in (200, 404):
            return response.status_code == 200
        raise self._error(response)

    def upload_blob(self, digest: str, chunks: Iterable[bytes], size: int) -> None:
        """Send a blob's bytes; the server keeps them only if they hash to ``digest``."""
        self._request("POST", f"/api/blobs/{digest}", content=chunks,
                      headers={"Content-Length": str(size)})

    def copy(self, source: str, destination: str) -> None:
        self._request("POST", "/api/copy", {"source": source, "destination": destination})

    def delete(self, model: str) -> None:
        self._request("DELETE", "/api/delete", {"model": model})

    def chat(self, model: str, messages: list[dict[str, Any]], **fields: Any
             ) -> Iterator[dict[str, Any]]:
        return self.stream("/api/chat", {"model": model, "messages": messages, "stream": True,
                                         **fields})

    def generate(self, model: str, prompt: str, **fields: Any) -> Iterator[dict[str, Any]]:
        return self.stream("/api/generate", {"model": model, "prompt": prompt, "stream": True,
                                             **fields})
