"""Streaming responses that notice a departed client, and the wire encodings (NDJSON, SSE).

Starlette's StreamingResponse only learns of a disconnect when a write fails, which never happens
while a request waits in the queue or a long prompt is evaluated. Here a watcher reads ``receive``
for ``http.disconnect`` alongside the work and cancels it, so the engine frees the slot (or drops the
queued job) at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any, TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from homeport.errors import ClientClosedError

T = TypeVar("T")

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


def ndjson_line(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def sse_event(obj: Mapping[str, Any] | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


def sse_named_event(name: str, obj: Mapping[str, Any]) -> bytes:
    """An SSE event with an ``event:`` line, as Anthropic's API sends them."""
    return f"event: {name}\ndata: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


async def cancel_on_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Run ``work``; cancel it if the client disconnects first and raise ClientClosedError."""
    task = asyncio.ensure_future(work)
    gone = False

    async def watch() -> None:
        nonlocal gone
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
                task.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if gone:
            raise ClientClosedError() from None
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher


class StreamResponse(Response):
    """Sends each chunk of ``chunks`` as it comes, flushing per chunk; stops if the client leaves."""

    def __init__(self, chunks: AsyncIterator[bytes], media_type: str,
                 headers: Mapping[str, str] | None = None) -> None:
        self.chunks = chunks
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})

        async def pump() -> None:
            try:
                async for chunk in self.chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                aclose = getattr(self.chunks, "aclose", None)
                if aclose is not None:
                    await aclose()

        with contextlib.suppress(ClientClosedError, OSError):
            await cancel_on_disconnect(receive, pump())
