"""A small piece of ASGI plumbing that more than one middleware needs."""

from __future__ import annotations

from starlette.types import Message, Send


class StatusRecordingSend:
    """An ASGI ``send`` that passes every message on and notes the response's status."""

    def __init__(self, send: Send) -> None:
        self.status = 500  # until a response starts: none started is a failure
        self._send = send

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)
