"""A small piece of ASGI plumbing that more than one middleware needs."""

from __future__ import annotations

from starlette.types import Message, Send


class StatusRecordingSend:
    """An ASGI ``send`` that passes every message on and notes the response's status."""

    def __init__(self, send: Send, status: int = 0) -> None:
        self.status = status  # until the response starts: what a middleware reports for none
        self._send = send

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)
