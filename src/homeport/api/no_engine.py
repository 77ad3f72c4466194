"""A gateway node (``serve --no-engine``) serves no model itself: a model request that the mesh
routing did not forward (it sits innermost, after ``MeshRouting``) is refused here, before any
route could load a model."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from homeport.api.errors import error_response
from homeport.api.mesh_routing import ROUTED_PATHS

NO_ENGINE_MESSAGE = ("this node runs with --no-engine and serves no models itself, and no "
                     "reachable upstream has this model (see `homeport nodes`)")


class RefuseLocalModels:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in ROUTED_PATHS:
            await error_response(scope["path"], 404, NO_ENGINE_MESSAGE)(scope, receive, send)
            return
        await self.app(scope, receive, send)
