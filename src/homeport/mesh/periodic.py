"""A look taken now and every ``interval`` seconds, in the background, until closed."""

from __future__ import annotations

import asyncio
import contextlib


class Periodic:
    """Runs ``look`` (in subclasses) at ``start`` and then every ``interval`` seconds until
    ``close``; nothing here is on a request's path."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._look_forever(), name=type(self).__name__)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _look_forever(self) -> None:
        while True:
            await self.look()
            await asyncio.sleep(self.interval)

    async def look(self) -> None:
        raise NotImplementedError
