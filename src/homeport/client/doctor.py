"""``homeport doctor``: is the server there, will it let us in, and what can the link carry?

Checks in order (each a line with ok / warn / fail): the config file, the endpoint and its source,
the server and its version, access (token), models, on a homeport node which node it is (this
machine's or another's, a gateway or not), each of its upstreams as the node last saw them
(one down fails the check) and each of its RPC workers as a probe found it (the node probes those
it last saw not accepting again first; one that does not accept is a warning), the default model,
the Anthropic key.
Then a bounded measurement: round-trip latency (a few tiny requests) and one short streamed
answer, timed on both sides: the server's own tokens/s against the tokens/s that arrive here.
From those, an estimate of how fast models of other sizes would feel over this link.
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from homeport import config, endpoints
from homeport.client.adapters.ollama import pick_model
from homeport.client.api import HomeportClient, ServerError, ServerUnreachableError
from homeport.client.node_role import role, where
from homeport.client.settings import ANTHROPIC_ADAPTERS, STRATEGIES, ClientSettings
from homeport.errors import ConfigError, HomeportError
from homeport.humanize import format_duration

Status = Literal["ok", "warn", "fail"]
PING_COUNT = 10
PING_BUDGET_SECONDS = 3.0
PROBE_TOKENS = 24
PROBE_PROMPT = "Count from 1 to 100, separated by spaces."
SIZES_B = (1.0, 3.0, 8.0, 14.0, 32.0, 70.0)
COMFORTABLE_TPS = 10.0  # faster than people read
USABLE_TPS = 4.0


@dataclass
class Check:
    name: str
    status: Status
    detail: str


@dataclass
class SizeEstimate:
    billions: float
    tokens_per_second: float
    feel: str


@dataclass
class Network:
    rtt_ms: list[float]
    model: str = ""
    server_tps: float = 0.0
    received_tps: float = 0.0
    first_token_ms: float = 0.0
    bytes_per_token: float = 0.0
    link_keeps_up: bool = True
    sizes: list[SizeEstimate] = field(default_factory=list)

    @property
    def rtt_median_ms(self) -> float:
        return statistics.median(self.rtt_ms) if self.rtt_ms else 0.0

    @property
    def rtt_p90_ms(self) -> float:
        ordered = sorted(self.rtt_ms)
        return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] if ordered else 0.0


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    network: Network | None = None

    @property
    def failed(self) -> bool:
        return any(check.status == "fail" for check in self.checks)

    def add(self, name: str, status: Status, detail: str) -> None:
        self.checks.append(Check(name, status, detail))


def parameter_billions(text: str) -> float:
    """ "134.52M" -> 0.13452, "7.2B" -> 7.2; 0 when unknown."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMBT])\s*", text or "", re.IGNORECASE)
    if match is None:
        return 0.0
    scale = {"K": 1e-6, "M": 1e-3, "B": 1.0, "T": 1e3}[match.group(2).upper()]
    return float(match.group(1)) * scale


def feel(tokens_per_second: float) -> str:
    if tokens_per_second >= COMFORTABLE_TPS:
        return "comfortable"
    return "usable" if tokens_per_second >= USABLE_TPS else "slow"


def diagnose(explicit_endpoint: str | None = None, measure: bool = True) -> Report:
    report = Report()
    try:
        settings = ClientSettings()
        endpoint = endpoints.resolve_endpoint(explicit_endpoint)
    except ConfigError as exc:
        report.add("config", "fail", exc.message)
        return report
    file = config.config_file()
    report.add("config", "ok", f"{file}" + ("" if file.exists() else " (absent: defaults)"))
    report.add("endpoint", "ok", f"{endpoint.url} (from {endpoint.source})")
    with HomeportClient(endpoint) as client:
        models = _server_checks(report, client)
        if models is not None:
            model = _default_model(report, settings, models)
            if measure and model:
                try:
                    report.network = measure_network(client, model)
                except HomeportError as exc:
                    report.add("streaming", "fail", exc.message)
                else:
                    _network_checks(report, report.network)
    _anthropic_check(report, settings)
    return report


def _server_checks(report: Report, client: HomeportClient) -> list[dict[str, Any]] | None:
    started = time.perf_counter()
    try:
        version = client.version()
    except ServerUnreachableError as exc:
        report.add("server", "fail", exc.message)
        return None
    except ServerError as exc:
        report.add("server", "fail", f"{client.endpoint.url} is not an Ollama-API server "
                                     f"({exc.status}: {exc.message})")
        return None
    elapsed = (time.perf_counter() - started) * 1000
    name = f"homeport {version['homeport']}, " if "homeport" in version else ""
    report.add("server", "ok", f"{name}Ollama API {version.get('version', '?')}, answered in "
                               f"{elapsed:.0f} ms")
    try:
        models = client.list_models()
    except ServerError as exc:
        report.add("access", "fail", exc.message)
        return None
    token = client.endpoint.token_source
    report.add("access", "ok", "no token needed" if token == "not set"
               else f"token accepted (from {token})")
    names = [model["name"] for model in models]
    if names:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        report.add("models", "ok", f"{len(names)}: {shown}")
    else:
        report.add("models", "fail", "the server has no models; pull one with "
                                     "`homeport pull NAME`")
    if "homeport" in version:
        _node_checks(report, client)
    return models


def _node_checks(report: Report, client: HomeportClient) -> None:
    """Which node this is, then one line per upstream, as its refresher last saw them, and one per
    RPC worker, as a probe found it (one not seen accepting is probed again now; none: no line)."""
    try:
        node = client.node(recheck_workers=True)
    except ServerError as exc:  # an older homeport without the route: nothing to check
        report.add("node", "warn", f"{where(client.endpoint.url)}; its upstreams are not listed "
                                   f"({exc.message})")
        return
    report.add("node", "ok", f"{where(client.endpoint.url)}, {role(node)}")
    for upstream in node.get("nodes", []):
        report.add(f"node {upstream.get('name', '?')}", *_upstream_check(upstream))
    for worker in node.get("workers", []):
        report.add(f"worker {worker.get('endpoint', '?')}", *_worker_check(worker))


def _since(timestamp: str | None) -> str:
    try:
        moment = datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    except ValueError:
        return ""
    seconds = max(0.0, (datetime.now(UTC) - moment).total_seconds())
    return f" for {format_duration(seconds)}" if seconds >= 1 else ""


def _upstream_check(node: dict[str, Any]) -> tuple[Status, str]:
    url, kind, state = node.get("url", "?"), node.get("kind", "?"), node.get("state")
    if state == "up":
        round_trip = node.get("round_trip_ms")
        timing = f", round trip {round_trip:.1f} ms" if isinstance(round_trip, float | int) else ""
        count = node.get("models", 0)
        return "ok", (f"up: {url}, {kind}, {count} model{'' if count == 1 else 's'}{timing}, "
                      f"load {node.get('load', node.get('in_flight', 0))}")
    if state == "self":
        return "ok", f"{url} is this node itself (its models are listed once, as local)"
    if state != "down":
        return "warn", f"{url} not asked yet (the node started moments ago): run doctor again"
    remedy = ("it was found on the tailnet: start homeport or Ollama there, or leave it off"
              if node.get("discovered") else
              "start its server, or remove it from the node's upstreams (serve --upstream, "
              "HOMEPORT_UPSTREAMS, [[upstream]] in config.toml)")
    kind = "kind not known yet" if kind == "auto" else kind
    return "fail", (f"down{_since(node.get('down_since'))}: {url} ({kind}): "
                    f"{node.get('last_error') or 'no answer'}; {remedy}")


def _ago(timestamp: str | None) -> str:
    try:
        moment = datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    except ValueError:
        return "at an unknown time"
    seconds = (datetime.now(UTC) - moment).total_seconds()
    return "just now" if seconds < 1 else f"{format_duration(seconds)} ago"


def _worker_check(worker: dict[str, Any]) -> tuple[Status, str]:
    found = (f"found on the tailnet (peer {worker.get('peer')})" if worker.get("discovered")
             else "configured")
    reachable = worker.get("reachable")
    if reachable is None:
        return "warn", f"{found}, not probed yet (the node started moments ago): run doctor again"
    checked = f"checked {_ago(worker.get('checked'))}"
    if reachable:
        return "ok", f"{found}, accepting connections ({checked})"
    last = worker.get("last_accepted")
    accepted = f"last accepted {_ago(last)}" if last else "not seen accepting since the node started"
    return "warn", (f"{found}, not accepting connections ({checked}, {accepted}): start "
                    "`homeport worker` on that machine, or check that its policy allows this node; "
                    "loads go without it")


def _default_model(report: Report, settings: ClientSettings, models: list[dict[str, Any]]
                   ) -> str:
    wanted = settings.model("ollama")
    chosen, found = pick_model([str(model["name"]) for model in models], wanted.value)
    if not chosen:
        return ""
    if found:
        report.add("ollama model", "ok", f"{chosen} (from {wanted.source})")
        return chosen
    report.add("ollama model", "warn", f"{wanted.value} (from {wanted.source}) is not on the "
               f"server; {chosen} is used instead (set model under [adapters.ollama])")
    return chosen


def _anthropic_check(report: Report, settings: ClientSettings) -> None:
    """What each strategy's adapter will be, as ``chat`` and ``edit`` decide it, and its key."""
    keys: dict[str, str] = {}  # an Anthropic adapter in use -> where its key comes from
    fallbacks: list[str] = []
    missing: list[str] = []
    try:
        for strategy in STRATEGIES:
            chosen, notice = settings.effective_adapter(strategy)
            if notice:
                fallbacks.append(notice)
            if chosen.value not in ANTHROPIC_ADAPTERS or chosen.value in keys:
                continue
            key = settings.anthropic_key(chosen.value)
            if key.value:
                keys[chosen.value] = key.source
            else:  # chosen in the config file, so it never gives way to ollama
                missing.append(f"{strategy} uses {chosen.value} (from {chosen.source}), which has "
                               "no API key: set ANTHROPIC_API_KEY or api_key under "
                               f"[adapters.{chosen.value}]")
    except ConfigError as exc:
        report.add("anthropic", "fail", exc.message)
        return
    found = [f"{name} API key set (from {source})" for name, source in keys.items()]
    if missing:
        report.add("anthropic", "fail", "; ".join([*missing, *fallbacks, *found]))
    elif fallbacks:
        report.add("anthropic", "warn", "; ".join([*fallbacks, *found]))
    else:
        report.add("anthropic", "ok", "; ".join(found) or "not used")


def measure_network(client: HomeportClient, model: str) -> Network:
    """Round trips, then one short answer timed here and on the server (bounded)."""
    network = Network(rtt_ms=[])
    deadline = time.perf_counter() + PING_BUDGET_SECONDS
    for _ in range(PING_COUNT):
        started = time.perf_counter()
        client.version()
        network.rtt_ms.append((time.perf_counter() - started) * 1000)
        if time.perf_counter() > deadline:
            break
    size = parameter_billions(client.show(model).get("details", {}).get("parameter_size", ""))
    arrivals: list[float] = []
    sizes: list[int] = []
    final: dict[str, Any] = {}
    started = time.perf_counter()
    for chunk, line_bytes in client.stream_sized("/api/chat", {
            "model": model, "messages": [{"role": "user", "content": PROBE_PROMPT}],
            "stream": True, "options": {"temperature": 0, "num_predict": PROBE_TOKENS}}):
        if chunk.get("done"):
            final = chunk
        elif chunk.get("message", {}).get("content"):
            arrivals.append(time.perf_counter())
            sizes.append(line_bytes)
    network.model = model
    if final.get("eval_duration") and final.get("eval_count"):
        network.server_tps = final["eval_count"] / final["eval_duration"] * 1e9
    if len(arrivals) > 1:
        network.received_tps = (len(arrivals) - 1) / max(arrivals[-1] - arrivals[0], 1e-6)
        network.first_token_ms = (arrivals[0] - started) * 1000
        network.bytes_per_token = statistics.mean(sizes)
    network.link_keeps_up = network.received_tps >= 0.9 * network.server_tps
    if size and network.server_tps:
        # Decoding is bound by reading the weights: speed falls with size. The link's share is
        # what it delivered, when it could not keep up.
        ceiling = network.received_tps if not network.link_keeps_up else float("inf")
        for billions in SIZES_B:
            estimate = min(network.server_tps * size / billions, ceiling)
            network.sizes.append(SizeEstimate(billions, estimate, feel(estimate)))
    return network


def _network_checks(report: Report, network: Network) -> None:
    median = network.rtt_median_ms
    report.add("latency", "ok" if median < 150 else "warn",
               f"median {median:.1f} ms, p90 {network.rtt_p90_ms:.1f} ms over "
               f"{len(network.rtt_ms)} requests" + ("" if median < 150 else
                                                    ": each request starts that much later"))
    if not network.server_tps:
        report.add("streaming", "warn", f"{network.model} gave no timings to compare")
        return
    keeps_up = "the link keeps up" if network.link_keeps_up else "the link is the bottleneck"
    report.add("streaming", "ok" if network.link_keeps_up else "warn",
               f"{network.model}: {network.server_tps:.0f} tokens/s on the server, "
               f"{network.received_tps:.0f} received here ({keeps_up}); first token after "
               f"{network.first_token_ms:.0f} ms, ~{network.bytes_per_token:.0f} bytes a token")

