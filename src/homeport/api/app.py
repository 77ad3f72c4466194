"""Assembling the HTTP app: routes, middleware in one explicit order, error handlers, lifespan."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from homeport import metrics
from homeport.api import (
    anthropic_routes,
    model_routes,
    node_routes,
    ollama_routes,
    openai_routes,
    responses_routes,
)
from homeport.api.common import AppState
from homeport.api.errors import homeport_error, http_error, unexpected_error
from homeport.api.truncation import TruncationHeader
from homeport.asgi import StatusRecordingSend
from homeport.engine.service import Engine
from homeport.engine.worker_list import WorkerList
from homeport.errors import HomeportError
from homeport.mesh.upstreams import Upstreams
from homeport.store import ModelStore

log = logging.getLogger(__name__)

_SLASHES = re.compile(r"/{2,}")


class NormalizePath:
    """Collapse repeated slashes: CodeCompanion sends ``//api/chat`` when the URL ends in ``/``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "//" in scope["path"]:
            scope = dict(scope)
            scope["path"] = _SLASHES.sub("/", scope["path"])
            scope["raw_path"] = scope["path"].encode()
        await self.app(scope, receive, send)


class CountRequests:
    """Counts requests by route template and final status for /metrics."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        recording = StatusRecordingSend(send)
        try:
            await self.app(scope, receive, recording)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            metrics.REQUESTS.labels(path, str(recording.status)).inc()


async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)


@dataclass
class AppParts:
    """What the app is built from; extra middleware (the network guard) and routes plug in here."""

    store: ModelStore
    engine: Engine
    max_body_bytes: int
    upstreams: Upstreams | None = None
    engine_enabled: bool = True  # False: a gateway node (serve --no-engine), nothing runs here
    workers: WorkerList | None = None  # the RPC workers loads may use, configured and found
    # Probes the configured workers last seen not accepting, now (GET /api/homeport/nodes?recheck)
    recheck_workers: Callable[[], Awaitable[None]] | None = None
    middleware: list[Middleware] = field(default_factory=list)
    routes: list[BaseRoute] = field(default_factory=list)
    on_startup: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


async def _run_hooks(hooks: list[Callable[[], Awaitable[None]]]) -> None:
    for hook in hooks:
        await hook()


def create_app(parts: AppParts) -> Starlette:
    state = AppState(store=parts.store, engine=parts.engine, max_body_bytes=parts.max_body_bytes,
                     upstreams=parts.upstreams, engine_enabled=parts.engine_enabled,
                     workers=parts.workers, recheck_workers=parts.recheck_workers)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if parts.engine_enabled:
            await parts.engine.start()
        await _run_hooks(parts.on_startup)
        try:
            yield
        finally:
            try:
                if parts.engine_enabled:
                    await parts.engine.close()
            finally:
                await _run_hooks(parts.on_shutdown)  # the guard's flushes the audit log

    # Order, outermost first: paths are normalised before anything looks at them, then counted,
    # then the guard (when configured) decides who may continue; innermost, a truncated prompt's
    # header is added to the response.
    middleware = [Middleware(NormalizePath), Middleware(CountRequests), *parts.middleware,
                  Middleware(TruncationHeader)]
    app = Starlette(
        routes=[
            *ollama_routes.routes,
            *model_routes.routes,
            *node_routes.routes,
            *openai_routes.routes,
            *anthropic_routes.routes,
            *responses_routes.routes,
            *parts.routes,
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        middleware=middleware,
        exception_handlers={
            HomeportError: homeport_error,
            HTTPException: http_error,
            Exception: unexpected_error,
        },
        lifespan=lifespan,
    )
    app.state.homeport = state
    return app
