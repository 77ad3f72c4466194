"""What every route shares: the app's state, model lookup, timestamps and model descriptions."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request

from homeport.api.body import parse_json_text
from homeport.api.schemas import ToolCallIn
from homeport.engine.parsing import ToolCall
from homeport.engine.service import Engine
from homeport.engine.worker_list import WorkerList
from homeport.errors import BadRequestError
from homeport.mesh.upstreams import Upstreams
from homeport.net.caller import caller_of, record_of
from homeport.store import ModelRecord, ModelStore
from homeport.store.names import parse_name

# The Ollama release whose API homeport serves, as /api/version reports it. Clients gate features
# on it (Codex refuses anything older than 0.13.4), so it is the release that brought the newest
# API served here: Anthropic's Messages API (/v1/messages) came in Ollama 0.14.0, after the
# Responses API (/v1/responses) in 0.13.3.
OLLAMA_COMPAT_VERSION = "0.14.0"


@dataclass
class AppState:
    store: ModelStore
    engine: Engine
    max_body_bytes: int
    upstreams: Upstreams | None = None  # other machines whose models are listed here too
    engine_enabled: bool = True  # False: a gateway node (serve --no-engine)
    workers: WorkerList | None = None  # RPC workers: configured, and found on the tailnet
    recheck_workers: Callable[[], Awaitable[None]] | None = None  # see AppParts


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.homeport
    return state


def check_model(request: Request, name: str) -> str:
    """The model's display name, after 403 if the caller may not use it (before it is looked up,
    so a refusal never tells whether the model exists)."""
    display = parse_name(name).display
    caller_of(request.scope).check_model(display)
    record_of(request.scope).model = display
    return display


def resolve_model(request: Request, name: str) -> ModelRecord:
    """The record for ``name``: 400 when missing or invalid, 403 when the caller may not use it,
    404 when not in the store. Every route finds its model here."""
    if not name:
        raise BadRequestError("model is required")
    check_model(request, name)
    return state_of(request).store.resolve(name)


def rfc3339(moment: datetime | None = None) -> str:
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def nanoseconds(seconds: float) -> int:
    return int(seconds * 1e9)


def details(record: ModelRecord) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": record.family,
        "families": record.families,
        "parameter_size": record.parameter_size,
        "quantization_level": record.quantization_level,
    }


def model_summary(record: ModelRecord) -> dict[str, Any]:
    """A model as /api/tags lists it."""
    return {
        "name": record.name.display,
        "model": record.name.display,
        "modified_at": rfc3339(record.modified_at),
        "size": record.size,
        "digest": record.manifest_digest,
        "details": details(record),
    }


def tool_call_id() -> str:
    return f"call_{secrets.token_hex(8)}"


def ollama_tool_calls(calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
    return [{"id": tool_call_id(),
             "function": {"index": call.index, "name": call.name, "arguments": call.arguments}}
            for call in calls]


def template_tool_call(call_id: str | None, name: str, arguments: Any) -> dict[str, Any]:
    """A tool call of an earlier turn as chat templates expect it: arguments given as a JSON
    string are parsed (an unreadable or too deeply nested one becomes ``{}``)."""
    if isinstance(arguments, str):
        try:
            arguments = parse_json_text(arguments or "{}")
        except BadRequestError:
            arguments = {}
    return {"type": "function", "id": call_id,
            "function": {"name": name, "arguments": arguments}}


def incoming_tool_calls(calls: list[ToolCallIn] | None) -> list[dict[str, Any]] | None:
    """A message's tool calls (Ollama's and OpenAI's shape) as chat templates expect them."""
    if not calls:
        return None
    return [template_tool_call(call.id, call.function.name, call.function.arguments)
            for call in calls]


def function_tool(name: str, description: str | None,
                  parameters: dict[str, Any] | None) -> dict[str, Any]:
    """A tool definition as chat templates expect it (OpenAI's function shape)."""
    return {"type": "function", "function": {
        "name": name, "description": description or "",
        "parameters": parameters or {"type": "object", "properties": {}}}}
