"""The ``ollama`` adapter: any Ollama-API server (homeport or Ollama), on the official client.

The endpoint and its bearer token come from ``endpoints.resolve_endpoint``. A model chosen by default
(the config file or the built-in ``mistral``) that the server lacks is replaced, with a notice, by
the newest model the server has; a model the user named explicitly must exist.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import ollama

from homeport.client.adapters.base import (
    Adapter,
    AdapterError,
    ChatEvent,
    Finished,
    Message,
    TextDelta,
    ThinkingDelta,
    Usage,
)
from homeport.client.api import DEFAULT_TIMEOUT, ServerUnreachableError, refused
from homeport.config import config_file
from homeport.endpoints import Endpoint

# Loading a large model can take minutes before the first token: no read timeout, Ctrl-C stops.


def same_model(a: str, b: str) -> bool:
    """Ollama's local lookup: case-insensitive, ``latest`` when no tag is given."""
    def normal(name: str) -> str:
        last = name.rsplit("/", 1)[-1]
        return (name if ":" in last else f"{name}:latest").lower()

    return normal(a) == normal(b)


def pick_model(available: list[str], wanted: str) -> tuple[str, bool]:
    """(the model to use, whether it is ``wanted``): the server's name for ``wanted``, else the
    newest model it has (``/api/tags`` lists the newest first), else "" when it has none."""
    for name in available:
        if same_model(name, wanted):
            return name, True
    return (available[0] if available else ""), False


class OllamaAdapter(Adapter):
    name = "ollama"

    def __init__(self, endpoint: Endpoint, model: str, *, explicit: bool = True,
                 options: dict[str, Any] | None = None, keep_alive: str | None = None) -> None:
        self.endpoint = endpoint
        self.options = options or {}
        self.keep_alive = keep_alive
        self.notices = []
        self._client = ollama.Client(host=endpoint.url, headers=endpoint.headers, timeout=DEFAULT_TIMEOUT)
        self.model = self._choose(model, explicit)

    @property
    def where(self) -> str:
        if self.endpoint.source == "default":
            return self.endpoint.url
        return f"{self.endpoint.url} (from {self.endpoint.source})"

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]  # the client lacks annotations

    def _choose(self, model: str, explicit: bool) -> str:
        available = self.models()
        chosen, found = pick_model(available, model)
        if found:
            return chosen
        if explicit:
            raise self._missing(model, available)
        if not chosen:
            raise AdapterError(f"the server at {self.where} has no models; pull one with "
                               f"`homeport pull {model}`")
        self.notices.append(
            f"model '{model}' is not on the server at {self.endpoint.url}; using '{chosen}' "
            f"(set model under [adapters.ollama] in {config_file()})")
        return chosen

    def _missing(self, model: str, available: list[str]) -> AdapterError:
        has = f" (it has: {', '.join(available)})" if available else ""
        return AdapterError(f"model '{model}' not found on the server at {self.where}{has}; "
                            f"pull it with `homeport pull {model}`")

    def use_model(self, model: str) -> None:
        self.model = self._choose(model, explicit=True)

    def models(self) -> list[str]:
        try:
            listing = self._client.list()
        except ollama.ResponseError as exc:
            raise self._error(exc) from None
        except (ConnectionError, httpx.TransportError) as exc:
            raise self._unreachable(exc) from None
        return [model.model for model in listing.models if model.model]

    def stream(self, messages: Sequence[Message], system: str | None = None,
               max_tokens: int | None = None) -> Iterator[ChatEvent]:
        payload = [{"role": "system", "content": system}] if system else []
        payload += [{"role": message.role, "content": message.content} for message in messages]
        options = dict(self.options)
        if max_tokens is not None:
            options["num_predict"] = min(max_tokens, options.get("num_predict") or max_tokens)
        try:
            parts = self._client.chat(self.model, messages=payload, stream=True,
                                      options=options or None, keep_alive=self.keep_alive)
            for part in parts:
                if part.message.thinking:
                    yield ThinkingDelta(part.message.thinking)
                if part.message.content:
                    yield TextDelta(part.message.content)
                if part.done:
                    usage = Usage(part.prompt_eval_count or 0, part.eval_count or 0)
                    yield Finished(usage, part.done_reason or "stop")
        except ollama.ResponseError as exc:
            raise self._error(exc) from None
        except (ConnectionError, httpx.TransportError) as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: Exception) -> ServerUnreachableError:
        reason = "could not connect" if not isinstance(exc, httpx.TransportError) else (
            str(exc) or type(exc).__name__)
        return ServerUnreachableError(self.endpoint, reason)

    def _error(self, exc: ollama.ResponseError) -> AdapterError:
        status, message = exc.status_code, str(exc.error)
        if status == 404 and "not found" in message and "model" in message:
            return self._missing(self.model, [])
        if status in (401, 403):
            return AdapterError(refused(status, message, self.endpoint))
        if status < 0:  # an {"error"} line after the stream had started
            return AdapterError(f"the server at {self.endpoint.url} stopped the answer: {message}")
        return AdapterError(f"the server at {self.endpoint.url} answered {status}: {message}")
