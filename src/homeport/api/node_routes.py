"""``GET /api/homeport/nodes``: this node's upstreams as the refresher last saw them, whether
it runs models itself, and the RPC workers its loads may place layers on, configured or found on
the tailnet, each with how its last probe went (``homeport nodes`` and ``homeport doctor`` print
it). ``?recheck=workers`` first probes again, now, the configured workers last seen not accepting
(``homeport doctor`` asks: a worker started since is not reported down for minutes of backoff).
Behind the guard like every route."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from homeport.api.common import rfc3339, state_of
from homeport.engine.worker_list import Worker
from homeport.errors import BadRequestError
from homeport.mesh.upstreams import Upstream

NODES_PATH = "/api/homeport/nodes"


def _wall_clock(monotonic: float) -> str:
    return rfc3339(datetime.fromtimestamp(time.time() - (time.monotonic() - monotonic), UTC))


def node_summary(upstream: Upstream) -> dict[str, Any]:
    # "self": an upstream that is this node (listed once, as local); "unknown": not asked yet
    state = ("self" if upstream.is_self else "up" if upstream.up
             else "down" if upstream.checked else "unknown")
    return {
        "name": upstream.name,
        "url": upstream.settings.url,
        "kind": upstream.kind,
        "state": state,
        "down_since": (_wall_clock(upstream.down_since)
                       if upstream.down_since is not None else None),
        "last_error": upstream.last_error or None,
        "round_trip_ms": (round(upstream.round_trip * 1000, 1)
                          if upstream.round_trip is not None else None),
        "models": len(upstream.models) if upstream.up else 0,
        "in_flight": upstream.in_flight,
        "load": upstream.load,
        "priority": upstream.settings.priority,
        "discovered": upstream.discovered,
    }


def worker_summary(worker: Worker) -> dict[str, Any]:
    # "reachable": whether its last probe was accepted; None: not probed yet
    seen = worker.seen
    return {
        "endpoint": worker.endpoint,
        "peer": worker.peer or None,
        "discovered": bool(worker.peer),
        "reachable": seen.accepting if seen is not None else None,
        "checked": _wall_clock(seen.checked) if seen is not None else None,
        "last_accepted": (_wall_clock(seen.last_accepted)
                          if seen is not None and seen.last_accepted is not None else None),
    }


async def nodes(request: Request) -> JSONResponse:
    state = state_of(request)
    recheck = request.query_params.get("recheck")
    if recheck not in (None, "workers"):
        raise BadRequestError("recheck: the only thing to check again is 'workers'")
    if recheck and state.recheck_workers is not None and state.engine_enabled:
        await state.recheck_workers()
    upstreams = state.upstreams.all if state.upstreams else []
    workers = state.workers.listing() if state.workers is not None and state.engine_enabled else []
    return JSONResponse({"engine": state.engine_enabled,
                         "nodes": [node_summary(upstream) for upstream in upstreams],
                         "workers": [worker_summary(worker) for worker in workers]})


routes = [Route(NODES_PATH, nodes, methods=["GET"])]
