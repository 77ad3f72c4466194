"""Telling the caller that its prompt was cut to fit the context, where the wire has room.

Agents send prompts longer than a small default context (Claude Code's is about 20,000 tokens);
the engine then keeps the start and the end and drops the middle, and the answer is still a 200.
Besides the final chunk's ``prompt_truncated_from`` (Ollama's API) and a Prometheus counter, every
API gets a response header, ``X-Homeport-Prompt-Truncated: <original> -> <kept>``. The generation
starts before its route builds the response, so the header is known in time: ``note`` records it
in the request's scope and ``TruncationHeader`` adds it as the response starts, for every route
without each one spelling it out.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from homeport.engine.service import Generation

HEADER = "X-Homeport-Prompt-Truncated"
_SCOPE_KEY = "homeport.prompt_truncation"


@dataclass
class _Note:
    value: str = ""


def note(scope: Scope, generation: Generation) -> None:
    """Record ``generation``'s truncation, if its prompt was cut, for the response's header."""
    holder = scope.get(_SCOPE_KEY)
    if isinstance(holder, _Note) and generation.prompt_truncated_from is not None:
        holder.value = f"{generation.prompt_truncated_from} -> {generation.prompt_kept}"


class TruncationHeader:
    """Adds the header to a response whose generation's prompt was truncated."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # A holder, not a value: whatever copies the scope below still shares it.
        holder = _Note()
        scope[_SCOPE_KEY] = holder

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start" and holder.value:
                headers = [*message.get("headers", []),
                           (HEADER.lower().encode(), holder.value.encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_header)
