"""Building and running the server process: settings → store → engine → app → uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn

from homeport import __version__, config
from homeport.api.app import AppParts, create_app
from homeport.engine.manager import ManagerSettings
from homeport.engine.service import Engine, EngineSettings
from homeport.store.store import open_store

log = logging.getLogger("homeport")


def setup_logging() -> None:
    level = config.LOG_LEVEL.get()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
    )
    # httpx logs every registry request at INFO; a pull makes dozens.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def engine_settings() -> EngineSettings:
    return EngineSettings(
        manager=ManagerSettings(
            max_loaded=config.MAX_LOADED_MODELS.get(),
            num_parallel=config.NUM_PARALLEL.get(),
            max_queue=config.MAX_QUEUE.get(),
            default_keep_alive=config.KEEP_ALIVE.get(),
            memory_limit=config.MEMORY_LIMIT.get(),
            load_timeout=config.LOAD_TIMEOUT.get(),
        ),
        default_num_ctx=config.CONTEXT_LENGTH.get(),
        num_threads=config.NUM_THREADS.get(),
    )


def build_parts() -> AppParts:
    store = open_store()
    return AppParts(store=store, engine=Engine(engine_settings()),
                    max_body_bytes=config.MAX_BODY_BYTES.get())


def audience(address: config.HostAddress) -> str:
    """Who can reach a server bound to ``address``, said plainly for the startup banner."""
    if config.is_loopback_host(address.host):
        return "only this machine (loopback)"
    return f"anyone who can reach {address.host} on port {address.port}"


def run_server(address: config.HostAddress) -> None:
    setup_logging()
    parts = build_parts()
    app = create_app(parts)
    log.info("homeport %s listening on %s:%d: reachable by %s", __version__, address.host,
             address.port, audience(address))
    for names, value, _ in config.describe_settings():
        log.debug("setting %s = %s", names, value)
    models = [record.name.display for record in parts.store.list_models()]
    log.info("models: %s", ", ".join(models) or "none (pull one with `homeport pull NAME`)")
    server = uvicorn.Server(uvicorn.Config(
        app, host=address.host, port=address.port, http="h11", lifespan="on",
        log_level="warning", timeout_graceful_shutdown=5, access_log=False,
    ))
    server.run()
