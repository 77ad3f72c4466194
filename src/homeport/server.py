"""Building and running the server process: settings → binding → store → engine → guarded app →
uvicorn."""

from __future__ import annotations

import logging
import math
import sys

import uvicorn
from starlette.middleware import Middleware

from homeport import __version__, config, endpoints
from homeport.api.app import AppParts, create_app
from homeport.api.errors import error_response
from homeport.api.mesh_routing import MeshRouting, new_node_id
from homeport.api.no_engine import RefuseLocalModels
from homeport.engine.manager import ManagerSettings
from homeport.engine.memory import available_memory
from homeport.engine.service import Engine, EngineSettings
from homeport.engine.worker_list import WorkerList
from homeport.mesh.discovery import PeerDiscovery
from homeport.mesh.upstreams import Upstreams, configured_upstreams
from homeport.mesh.worker_check import ConfiguredWorkerCheck
from homeport.mesh.worker_discovery import WorkerDiscovery
from homeport.net.binding import bind
from homeport.net.connection import ConnectionLimits, h11_protocol
from homeport.net.gate import Gate
from homeport.net.guard import Guard
from homeport.net.localapi import LocalAPI
from homeport.net.policy import Policy
from homeport.net.tokens import TokenChecker, TokenStore
from homeport.store.prune import prune
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
    # httpx logs every request at INFO: a pull makes dozens, the LocalAPI one per connection.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def prompt_cache_budget(configured: int, memory_limit: int) -> int:
    """HOMEPORT_CACHE_RAM, or when it is not set (-1), a sixteenth of the memory models may use,
    at most 8 GiB."""
    if configured >= 0:
        return configured
    return min(8 * 1024**3, (memory_limit or available_memory()) // 16)


def engine_settings(workers: WorkerList | None = None) -> EngineSettings:
    """The engine's settings from the environment; ``workers`` are the RPC workers loads read
    (by default those configured in HOMEPORT_RPC_WORKERS)."""
    flash_attention, flash_attention_source = config.FLASH_ATTENTION.lookup()
    kv_cache_type = config.KV_CACHE_TYPE.get()
    if kv_cache_type != "f16" and flash_attention == "off":
        log.warning("a %s K/V cache needs flash attention, which is turned off: using f16",
                    kv_cache_type)
        kv_cache_type = "f16"
    return EngineSettings(
        manager=ManagerSettings(
            max_loaded=config.MAX_LOADED_MODELS.get(),
            num_parallel=config.NUM_PARALLEL.get(),
            max_queue=config.MAX_QUEUE.get(),
            default_keep_alive=config.KEEP_ALIVE.get(),
            memory_limit=config.MEMORY_LIMIT.get(),
            gpu_overhead=config.GPU_OVERHEAD.get(),
            spread=config.SCHED_SPREAD.get(),
            rpc_workers=workers if workers is not None else WorkerList(config.RPC_WORKERS.get()),
            load_timeout=config.LOAD_TIMEOUT.get(),
        ),
        default_num_ctx=config.CONTEXT_LENGTH.get() or None,  # 0: chosen per model
        num_threads=config.NUM_THREADS.get(),
        flash_attention=flash_attention,
        flash_attention_by_name=flash_attention_source != "OLLAMA_FLASH_ATTENTION",
        kv_cache_type=kv_cache_type,
        speculation=config.SPECULATION.get(),
        cache_ram=prompt_cache_budget(config.CACHE_RAM.get(), config.MEMORY_LIMIT.get()),
        cache_ram_auto=config.CACHE_RAM.get() < 0,
        template_timeout=config.TEMPLATE_TIMEOUT.get(),
    )


def build_parts(upstream_urls: tuple[str, ...] = (), no_engine: bool = False,
                workers: WorkerList | None = None) -> AppParts:
    workers = workers if workers is not None else WorkerList(config.RPC_WORKERS.get())
    store = open_store(with_bundled=not no_engine)
    if not config.NOPRUNE.get():
        try:
            prune(store)
        except OSError as exc:  # tidying is a courtesy: it never keeps the server from starting
            log.warning("the model store was not tidied: %s", exc)
    upstreams = Upstreams(configured_upstreams(upstream_urls), config.UPSTREAM_REFRESH.get(),
                          node_id=new_node_id())
    return AppParts(store=store, engine=Engine(engine_settings(workers)),
                    max_body_bytes=config.MAX_BODY_BYTES.get(), upstreams=upstreams,
                    engine_enabled=not no_engine, workers=workers)


def _find_workers(parts: AppParts, workers: WorkerList, tailnet: bool) -> None:
    """Say which RPC workers loads use and, with --tailnet, look for more among the peers."""
    if workers.configured:
        log.info("RPC workers: %s (configured)", ", ".join(workers.configured))
        check = ConfiguredWorkerCheck(workers, config.PEER_DISCOVERY_INTERVAL.get())
        parts.on_startup.append(check.start)
        parts.on_shutdown.append(check.close)
        parts.recheck_workers = check.recheck
    if not tailnet or not config.DISCOVER_WORKERS.get():
        return
    discovery = WorkerDiscovery(LocalAPI(config.tailscaled_socket()), workers,
                                config.PEER_DISCOVERY_INTERVAL.get(),
                                port=config.WORKER_DISCOVERY_PORT.get())
    parts.on_startup.append(discovery.start)
    parts.on_shutdown.append(discovery.close)
    log.info("tailnet peers accepting connections on port %d become RPC workers (looked for "
             "every %gs)", discovery.port, discovery.interval)


def run_server(address: endpoints.HostAddress, tailnet: bool = False, expose: bool = False,
               upstream_urls: tuple[str, ...] = (), no_engine: bool = False) -> None:
    setup_logging()
    policy = Policy.load(*config.policy_file())
    tokens = TokenChecker(TokenStore(config.tokens_file()))
    binding = bind(address, tailnet=tailnet, expose=expose, policy=policy,
                   tokens=tokens.active_count())
    try:
        workers = WorkerList(config.RPC_WORKERS.get())
        parts = build_parts(upstream_urls, no_engine, workers)
        gate = Gate.from_settings(policy, tokens, bind_host=address.host)
        parts.middleware.append(Middleware(Guard, gate=gate, render_error=error_response))
        parts.on_startup.append(gate.start)
        parts.on_shutdown.append(gate.close)
        discovery = (PeerDiscovery(LocalAPI(config.tailscaled_socket()), parts.upstreams,
                                   config.PEER_DISCOVERY_INTERVAL.get())
                     if tailnet and parts.upstreams is not None and config.DISCOVER_PEERS.get()
                     else None)
        if parts.upstreams is not None and (parts.upstreams or discovery is not None):
            # inside the guard: only admitted callers are forwarded
            parts.middleware.append(Middleware(
                MeshRouting, upstreams=parts.upstreams, store=parts.store,
                max_body_bytes=parts.max_body_bytes, node_id=parts.upstreams.node_id))
            parts.on_startup.append(parts.upstreams.start)
            parts.on_shutdown.append(parts.upstreams.close)
            log.info("upstreams: %s", ", ".join(
                f"{upstream.name} ({upstream.settings.url})" for upstream in parts.upstreams.all)
                or "none configured")
        if discovery is not None:  # after the upstreams start, before they close
            parts.on_startup.append(discovery.start)
            parts.on_shutdown.insert(len(parts.on_shutdown) - 1, discovery.close)
            log.info("tailnet peers answering on port %d become upstreams (looked for every %gs)",
                     discovery.port, discovery.interval)
        if not no_engine:
            _find_workers(parts, workers, tailnet)
        if no_engine:  # innermost: what the routing did not forward would be served here
            parts.middleware.append(Middleware(RefuseLocalModels))
            log.info("no engine: this node serves no models itself, it only forwards")
        app = create_app(parts)
        log.info("homeport %s listening on %s: reachable by %s", __version__,
                 ", ".join(binding.shown), binding.audience)
        log.info("policy: %s", policy.source)
        for names, value, _ in config.describe_settings():
            log.debug("setting %s = %s", names, value)
        models = [record.name.display for record in parts.store.list_models()]
        log.info("models: %s", ", ".join(models) or "none (pull one with `homeport pull NAME`)")
        server = uvicorn.Server(uvicorn.Config(
            app, http=h11_protocol(ConnectionLimits(
                header_timeout=config.HEADER_TIMEOUT.get(),
                max_per_peer=config.MAX_CONNECTIONS_PER_PEER.get())),
            timeout_keep_alive=math.ceil(config.IDLE_TIMEOUT.get()),
            lifespan="on", log_level="warning", timeout_graceful_shutdown=5, access_log=False,
            # uvicorn would otherwise believe X-Forwarded-For from loopback and hand the guard a
            # client address any local process can forge; proxies are the guard's business.
            proxy_headers=False,
        ))
        server.run(sockets=binding.sockets)
    finally:
        binding.close()
