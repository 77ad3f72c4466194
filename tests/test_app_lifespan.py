"""The app's lifespan, driven as uvicorn drives it: what runs at start and at shutdown."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from homeport.api.app import AppParts, create_app
from homeport.engine.service import Engine
from homeport.server import engine_settings
from homeport.store import ModelStore


class EngineThatFailsToClose(Engine):
    async def close(self) -> None:
        await super().close()
        raise RuntimeError("the engine could not close")


def test_shutdown_hooks_run_even_when_the_engine_fails_to_close(tmp_path: Path) -> None:
    """The guard's shutdown hook flushes the audit log: an engine error must not skip it."""
    ran: list[str] = []

    async def on_shutdown() -> None:
        ran.append("shutdown")

    app = create_app(AppParts(store=ModelStore(tmp_path / "models"),
                              engine=EngineThatFailsToClose(engine_settings()),
                              max_body_bytes=1024, on_shutdown=[on_shutdown]))

    async def start_and_stop() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(RuntimeError, match="could not close"):
        asyncio.run(start_and_stop())
    assert ran == ["shutdown"]
