"""The other servers this node routes to: configured, probed, and kept fresh in the background.

Upstreams come from ``serve --upstream URL``, ``HOMEPORT_UPSTREAMS`` and ``[[upstream]]`` tables
in config.toml. A background task asks each one for ``/api/version`` (to tell homeport from Ollama
when ``kind = "auto"``; a server answering neither but listing ``/v1/models`` is OpenAI-compatible:
vLLM, llama-server, LM Studio, SGLang) and its model list every few seconds with short timeouts;
a failure marks it
down and spaces the next tries out (backoff), an answer marks it up again. A homeport upstream is
also asked for its ``/api/ps``: the busy slots and queued requests that others put on it are part
of its load. Requests only read this
state: nothing here ever runs on a request's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from homeport import config
from homeport.errors import ConfigError
from homeport.secrets import check_reference, resolve_secret
from homeport.store.names import is_valid_name, parse_name

log = logging.getLogger(__name__)

Kind = Literal["auto", "homeport", "ollama", "openai"]
KINDS: tuple[Kind, ...] = ("auto", "homeport", "ollama", "openai")
PROBE_TIMEOUT = httpx.Timeout(3.0, connect=1.0)
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
# Connecting is quick or the machine is away; an answer may take as long as a model needs.
FORWARD_TIMEOUT = httpx.Timeout(None, connect=2.0)
# A homeport node names its process in /api/version's answer, so that a node finding its own id
# there knows the upstream is itself (a shared HOMEPORT_UPSTREAMS list names every machine).
NODE_ID_HEADER = "x-homeport-node-id"
MAX_LISTED_MODELS = 10_000  # an upstream's listing is held to this many entries
MAX_REPORTED_LOAD = 10_000  # one model's busy slots or queue, as an upstream reports it


@dataclass(frozen=True)
class UpstreamConfig:
    """One upstream as configured: where, how to authenticate, what it is, how much preferred."""

    name: str
    url: str
    token: str = ""  # a secret reference (env:NAME or cmd:COMMAND), never the secret
    kind: Kind = "auto"
    priority: int = 0  # higher is preferred
    models: tuple[str, ...] = ("*",)  # globs: only these of its models are used


def _checked_url(url: str, where: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: {url!r} is not an http(s) URL such as http://desktop:11434")
    return url.strip().rstrip("/")


def name_from_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def _from_table(table: Mapping[str, Any], index: int) -> UpstreamConfig:
    where = f"config.toml [[upstream]] #{index + 1}"
    unknown = set(table) - {"url", "token", "kind", "priority", "models", "name"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    url = _checked_url(str(table.get("url", "")), where)
    kind = table.get("kind", "auto")
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind must be one of {', '.join(KINDS)}")
    priority = table.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ConfigError(f"{where}: priority must be an integer")
    models = table.get("models", ["*"])
    if not isinstance(models, list) or not all(isinstance(glob, str) for glob in models):
        raise ConfigError(f"{where}: models must be a list of name globs")
    token = check_reference(table["token"], f"{where} token") if "token" in table else ""
    return UpstreamConfig(name=str(table.get("name") or name_from_url(url)), url=url, token=token,
                          kind=kind, priority=priority, models=tuple(models) or ("*",))


def configured_upstreams(urls: Iterable[str] = ()) -> list[UpstreamConfig]:
    """Every upstream from the command line, HOMEPORT_UPSTREAMS and config.toml, first wins on a
    repeated URL; a ConfigError for a bad one (the server refuses to start rather than guess)."""
    found: list[UpstreamConfig] = []
    for url in [*urls, *config.UPSTREAMS.get()]:
        checked = _checked_url(url, "upstream")
        found.append(UpstreamConfig(name=name_from_url(checked), url=checked))
    tables = config.read_config_file().get("upstream", [])
    if not isinstance(tables, list):
        raise ConfigError("config.toml: upstream must be [[upstream]] tables")
    found.extend(_from_table(table, index) for index, table in enumerate(tables))
    unique: dict[str, UpstreamConfig] = {}
    for upstream in found:
        unique.setdefault(upstream.url, upstream)
    names = [upstream.name for upstream in unique.values()]
    if len(set(names)) != len(names) or "local" in names:
        raise ConfigError(f"upstream names must be distinct and not 'local': {', '.join(names)}")
    return list(unique.values())


def model_key(name: str) -> str:
    """The name models are matched by across machines: its display form (``x`` is ``x:latest``)."""
    return parse_name(name).display if is_valid_name(name) else name.lower()


@dataclass
class Upstream:
    """One upstream's live state, written by the refresher (and by the proxy when it fails)."""

    settings: UpstreamConfig
    token: str = ""
    kind: Kind = "auto"
    up: bool = False
    checked: bool = False  # asked at least once
    is_self: bool = False  # this very node: never asked again, never routed to, lists nothing
    discovered: bool = False  # found among the tailnet's peers, not configured
    down_since: float | None = None
    last_error: str = ""
    failures: int = 0
    next_check: float = 0.0
    in_flight: int = 0  # requests this node is forwarding to it now
    busy_elsewhere: int = 0  # its busy slots and queue at the last check, less this node's share
    round_trip: float | None = None  # seconds the last answered probe took
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # model key → its /api/tags entry
    # An OpenAI-compatible upstream's own /v1/models entries by model key: the id it is asked for
    # (which need not be a valid model name) and whatever it tells of the model.
    native: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def load(self) -> int:
        """What routing weighs: this node's requests to it now, and others' at the last check."""
        return self.in_flight + self.busy_elsewhere

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def has(self, key: str) -> bool:
        return key in self.models

    def mark_up(self, models: dict[str, dict[str, Any]]) -> None:
        if not self.up:
            log.info("upstream %s is up with %d models", self.name, len(models))
        self.up, self.checked, self.models = True, True, models
        self.down_since, self.last_error, self.failures = None, "", 0

    def mark_self(self) -> None:
        log.info("upstream %s is this node itself: its models are listed once, as local",
                 self.name)
        self.is_self, self.up, self.checked, self.models, self.native = True, False, True, {}, {}
        self.last_error, self.next_check = "", float("inf")

    def mark_down(self, error: str) -> None:
        """Down until the refresher hears from it again, tried less often the longer it stays."""
        if self.up or not self.checked:
            log.warning("upstream %s is down: %s", self.name, error)
        self.up, self.checked, self.last_error, self.busy_elsewhere = False, True, error, 0
        self.down_since = self.down_since or time.monotonic()
        self.failures += 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self.failures - 1))
        self.next_check = time.monotonic() + delay


def _wanted(upstream: Upstream, key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, glob.lower()) for glob in upstream.settings.models)


def _listed_models(upstream: Upstream, body: Any) -> dict[str, dict[str, Any]]:
    entries = body.get("models") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        raise ValueError("/api/tags did not answer a model list")
    models: dict[str, dict[str, Any]] = {}
    for entry in entries[:MAX_LISTED_MODELS]:
        name = (entry.get("name") or entry.get("model")) if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            continue
        key = model_key(name)
        if _wanted(upstream, key):
            models[key] = entry
    return models


def _openai_models(upstream: Upstream, body: Any) -> dict[str, dict[str, Any]]:
    """An OpenAI-compatible ``/v1/models`` answer's entries by model key."""
    entries = body.get("data") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        raise ValueError("/v1/models did not answer a model list")
    models: dict[str, dict[str, Any]] = {}
    for entry in entries[:MAX_LISTED_MODELS]:
        model_id = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(model_id, str) and model_id and _wanted(upstream, model_key(model_id)):
            models[model_key(model_id)] = entry
    return models


def reported_load(body: Any) -> int:
    """Busy slots and queued requests over the models of a homeport ``/api/ps`` answer."""
    entries = body.get("models") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        raise ValueError("/api/ps did not answer a model list")
    total = 0
    for entry in entries[:MAX_LISTED_MODELS]:
        slots = entry.get("slots") if isinstance(entry, dict) else None
        busy = slots.get("busy") if isinstance(slots, dict) else 0
        queued = entry.get("queued") if isinstance(entry, dict) else 0
        for count in (busy, queued):
            if isinstance(count, int) and not isinstance(count, bool):
                total += min(max(count, 0), MAX_REPORTED_LOAD)
    return total


def _tags_entry(native: dict[str, Any]) -> dict[str, Any]:
    """What ``/api/tags`` shows of a model an OpenAI-compatible server lists (it tells no more)."""
    created = native.get("created")
    modified = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
                if isinstance(created, int) and created > 0 else "1970-01-01T00:00:00Z")
    return {"name": native["id"], "model": native["id"], "modified_at": modified, "size": 0,
            "digest": "", "details": {"format": "", "family": "", "families": None,
                                      "parameter_size": "", "quantization_level": ""}}


class IsSelf(Exception):
    """The upstream answered with this node's own id."""


def kind_of_version(body: Any) -> Kind:
    if isinstance(body, dict) and "homeport" in body:
        return "homeport"
    if isinstance(body, dict) and isinstance(body.get("version"), str):
        return "ollama"
    raise ValueError("/api/version answered neither as homeport nor as Ollama")


class Upstreams:
    """Every upstream and the background task that keeps their state fresh."""

    def __init__(self, settings: Iterable[UpstreamConfig], interval: float,
                 node_id: str = "") -> None:
        self.all = [Upstream(settings=item, kind=item.kind) for item in settings]
        self.interval = interval
        self.node_id = node_id  # this process's id, to know itself among its upstreams
        self._client: httpx.AsyncClient | None = None  # probes: short timeouts
        self._forwarding: httpx.AsyncClient | None = None  # requests: as long as answers take
        self._task: asyncio.Task[None] | None = None

    def __bool__(self) -> bool:
        return bool(self.all)

    def named(self, name: str) -> Upstream | None:
        return next((upstream for upstream in self.all if upstream.name == name), None)

    async def start(self) -> None:
        for upstream in self.all:  # a reference that cannot be resolved stops the start, loudly
            if upstream.settings.token:
                upstream.token = resolve_secret(upstream.settings.token,
                                                f"upstream {upstream.name} token")
        # Started with none only where peers may be discovered later.
        self._client = httpx.AsyncClient(timeout=PROBE_TIMEOUT, trust_env=False)
        self._forwarding = httpx.AsyncClient(timeout=FORWARD_TIMEOUT, trust_env=False,
                                             limits=httpx.Limits(max_connections=None))
        self._task = asyncio.create_task(self._refresh_forever(), name="upstreams")

    def add(self, upstream: Upstream) -> None:
        """A discovered upstream joins; the refresher asks it at its next round."""
        self.all.append(upstream)

    def remove(self, upstream: Upstream) -> None:
        """A discovered upstream that left the tailnet (requests it answers now finish)."""
        self.all.remove(upstream)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for client in (self._client, self._forwarding):
            if client is not None:
                await client.aclose()

    def client(self) -> httpx.AsyncClient:
        """The connection pool requests are forwarded through (after ``start``)."""
        assert self._forwarding is not None, "upstreams not started"
        return self._forwarding

    async def _refresh_forever(self) -> None:
        while True:
            now = time.monotonic()
            due = [upstream for upstream in self.all if upstream.next_check <= now]
            await asyncio.gather(*(self._refresh(upstream) for upstream in due))
            await asyncio.sleep(min(BACKOFF_FIRST, self.interval))

    async def _refresh(self, upstream: Upstream) -> None:
        assert self._client is not None
        base, headers = upstream.settings.url, upstream.headers()
        started = time.monotonic()
        try:
            if upstream.settings.kind == "auto" or not upstream.checked:
                upstream.kind = await self._probe_kind(upstream)
            if upstream.kind == "openai":
                listing = await self._client.get(f"{base}/v1/models", headers=headers)
                listing.raise_for_status()
                upstream.native = _openai_models(upstream, listing.json())
                upstream.mark_up({key: _tags_entry(entry) for key, entry in upstream.native.items()})
                upstream.round_trip = time.monotonic() - started
            else:
                tags = await self._client.get(f"{base}/api/tags", headers=headers)
                tags.raise_for_status()
                upstream.mark_up(_listed_models(upstream, tags.json()))
                upstream.round_trip = time.monotonic() - started
                if upstream.kind == "homeport":
                    upstream.busy_elsewhere = await self._busy_elsewhere(upstream)
            upstream.next_check = time.monotonic() + self.interval
        except IsSelf:
            upstream.mark_self()
        except httpx.ReadTimeout:
            # Connected but slow to answer: busy, not away (a one-slot server such as
            # llama-cpp-python's lists its models only between two answers). Asked again later.
            if not upstream.up:
                upstream.mark_down("ReadTimeout")
            upstream.next_check = time.monotonic() + self.interval
        except (httpx.HTTPError, ValueError) as exc:
            upstream.mark_down(str(exc) or type(exc).__name__)

    async def _busy_elsewhere(self, upstream: Upstream) -> int:
        """The busy slots and queue its ``/api/ps`` reports, less the requests this node has in
        flight to it (counted once the answer is in: those are in it, or not yet arrived);
        0 when it does not tell."""
        assert self._client is not None
        try:
            ps = await self._client.get(f"{upstream.settings.url}/api/ps",
                                        headers=upstream.headers())
            ps.raise_for_status()
            reported = reported_load(ps.json())
        except (httpx.HTTPError, ValueError) as exc:
            log.debug("upstream %s: no load from /api/ps: %s", upstream.name, exc)
            return 0
        return max(0, reported - upstream.in_flight)

    async def _probe_kind(self, upstream: Upstream) -> Kind:
        """The configured kind, or for ``auto`` what ``/api/version`` (homeport, Ollama) or else
        ``/v1/models`` (an OpenAI-compatible server) says it is; IsSelf when it is this node."""
        configured = upstream.settings.kind
        if configured not in ("auto", "homeport"):
            return configured
        assert self._client is not None
        base, headers = upstream.settings.url, upstream.headers()
        try:
            version = await self._client.get(f"{base}/api/version", headers=headers)
            version.raise_for_status()
            if self.node_id and version.headers.get(NODE_ID_HEADER) == self.node_id:
                raise IsSelf()
            return kind_of_version(version.json()) if configured == "auto" else configured
        except httpx.TransportError:
            raise  # not reachable at all: asking another path will not help
        except (httpx.HTTPError, ValueError):
            if configured == "homeport":
                return configured  # its model list tells whether it is up
            listing = await self._client.get(f"{base}/v1/models", headers=headers)
            listing.raise_for_status()
            _openai_models(upstream, listing.json())  # a ValueError unless it lists models
            return "openai"
