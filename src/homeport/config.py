"""Every setting homeport reads, in one place.

Each environment variable is declared once in ``REGISTRY`` with its names (homeport's own first,
then Ollama's), default, parser and a one-line description. Values are read when asked for, so tests
only need to set the variable. A bad value logs a warning naming the variable and falls back to the
default, as Ollama does; ``serve --help`` and the startup log list the registry.

Addresses built from these settings (where the server binds, which server a client talks to) are
``homeport.endpoints``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import platformdirs

from homeport.durations import normalize_keep_alive, parse_go_duration, seconds_from_number
from homeport.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

def env_value(name: str) -> str:
    """An environment variable as Ollama reads it: trimmed of spaces and surrounding quotes."""
    return os.environ.get(name, "").strip().strip("\"'")


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One setting: the variables that set it (first wins), its default, parser and meaning."""

    names: tuple[str, ...]
    default: T
    parse: Callable[[str], T]
    description: str
    shown_default: str = ""
    secret: bool = False  # shown as "set" / "-", never by value

    def lookup(self) -> tuple[T, str]:
        """The effective value and where it came from (a variable's name, or "default")."""
        for name in self.names:
            raw = env_value(name)
            if not raw:
                continue
            try:
                return self.parse(raw), name
            except ValueError as exc:
                shown = "(hidden)" if self.secret else repr(raw)
                log.warning("invalid %s=%s (%s), using the default %s", name, shown, exc,
                            self.shown_default or self.default)
                return self.default, "default"
        return self.default, "default"

    def get(self) -> T:
        return self.lookup()[0]


REGISTRY: list[Setting[Any]] = []


def _register(setting: Setting[T]) -> Setting[T]:
    REGISTRY.append(setting)
    return setting


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 < value < 65536:
        raise ValueError("must be a port from 1 to 65535")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _keep_alive_seconds(raw: str) -> float:
    # OLLAMA_KEEP_ALIVE accepts Go durations and, unlike the API field, bare integers (seconds).
    try:
        seconds = parse_go_duration(raw)
    except ValueError:
        seconds = seconds_from_number(int(raw))
    return normalize_keep_alive(seconds)


def _load_timeout_seconds(raw: str) -> float:
    seconds = _keep_alive_seconds(raw)
    return math.inf if seconds <= 0 else seconds


def _template_timeout_seconds(raw: str) -> float:
    seconds = _keep_alive_seconds(raw)
    if not 0 < seconds <= 3600:
        raise ValueError("expected a duration between 1ms and 1h")
    return seconds


def _byte_size(raw: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?", raw.strip().lower())
    if match is None:
        raise ValueError("expected a size such as 512MiB, 4GB or 1073741824")
    number = float(match.group(1))
    unit = (match.group(2) or "").rstrip("b").rstrip("i")
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[unit]
    return int(number * scale)


def _comma_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _path_list(raw: str) -> tuple[Path, ...]:
    return tuple(Path(part).expanduser() for part in raw.split(os.pathsep) if part.strip())


def _boolean(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _flash_attention(raw: str) -> str:
    return "auto" if raw.lower() == "auto" else ("on" if _boolean(raw) else "off")


KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")


def _kv_cache_type(raw: str) -> str:
    if raw.lower() not in KV_CACHE_TYPES:
        raise ValueError(f"expected one of {', '.join(KV_CACHE_TYPES)}")
    return raw.lower()


def _log_level(raw: str) -> str:
    if raw.lower() in ("1", "true", "debug"):
        return "DEBUG"
    if raw.upper() in ("INFO", "WARNING", "ERROR", "0", "FALSE"):
        return "INFO" if raw.upper() in ("0", "FALSE") else raw.upper()
    raise ValueError("expected debug, info, warning or error")


# --- the server --------------------------------------------------------------------------------

HOST = _register(Setting(
    ("HOMEPORT_HOST", "OLLAMA_HOST"), "", str,
    "Address the server binds to, [scheme://]host[:port] (default 127.0.0.1:11434)",
    shown_default="127.0.0.1:11434",
))
KEEP_ALIVE = _register(Setting(
    ("HOMEPORT_KEEP_ALIVE", "OLLAMA_KEEP_ALIVE"), 300.0, _keep_alive_seconds,
    "How long a model stays loaded after its last request (default 5m; negative: forever)",
    shown_default="5m",
))
NUM_PARALLEL = _register(Setting(
    ("HOMEPORT_NUM_PARALLEL", "OLLAMA_NUM_PARALLEL"), 4, _positive_int,
    "Requests each loaded model runs at once, batched together (default 4)",
))
MAX_LOADED_MODELS = _register(Setting(
    ("HOMEPORT_MAX_LOADED_MODELS", "OLLAMA_MAX_LOADED_MODELS"), 3, _positive_int,
    "Models kept loaded at once; the least recently used is evicted (default 3)",
))
MAX_QUEUE = _register(Setting(
    ("HOMEPORT_MAX_QUEUE", "OLLAMA_MAX_QUEUE"), 512, _positive_int,
    "Requests that may wait for a slot before the server answers 503 (default 512)",
))
CONTEXT_LENGTH = _register(Setting(
    ("HOMEPORT_CONTEXT_LENGTH", "OLLAMA_CONTEXT_LENGTH"), 0, _positive_int,
    "num_ctx used when neither the request nor the model sets one (default: by memory, as "
    "Ollama: 4k under 23 GiB, 32k under 47 GiB, else 256k, held to the model's and what fits)",
    shown_default="auto",
))
LOAD_TIMEOUT = _register(Setting(
    ("HOMEPORT_LOAD_TIMEOUT", "OLLAMA_LOAD_TIMEOUT"), 300.0, _load_timeout_seconds,
    "How long a model load may take before it is abandoned (default 5m)",
    shown_default="5m",
))
TEMPLATE_TIMEOUT = _register(Setting(
    ("HOMEPORT_TEMPLATE_TIMEOUT",), 5.0, _template_timeout_seconds,
    "How long a chat template may take to render before its request is refused (default 5s)",
    shown_default="5s",
))
NUM_THREADS = _register(Setting(
    ("HOMEPORT_NUM_THREADS",), 0, _non_negative_int,
    "CPU threads llama.cpp uses (default 0: one per core)",
))
FLASH_ATTENTION = _register(Setting(
    ("HOMEPORT_FLASH_ATTENTION", "OLLAMA_FLASH_ATTENTION"), "auto", _flash_attention,
    "Flash attention: auto, true or false (default auto: llama.cpp decides; on an engine built "
    "for the CPU alone with homeport's patch, runners then ask for kernels whose answers do not "
    "move with the batch, and homeport speculates. HOMEPORT_FLASH_ATTENTION=true: llama.cpp's "
    "fastest kernels, for speed alone; OLLAMA_FLASH_ATTENTION=1 keeps the default there, which "
    "has flash attention on)",
))
KV_CACHE_TYPE = _register(Setting(
    ("HOMEPORT_KV_CACHE_TYPE", "OLLAMA_KV_CACHE_TYPE"), "f16", _kv_cache_type,
    "K/V cache type: f16, q8_0 (about half the memory) or q4_0 (about a quarter); "
    "quantized needs flash attention (default f16)",
))
def _speculation(raw: str) -> str:
    return "auto" if raw.lower() == "auto" else ("on" if _boolean(raw) else "off")


SPECULATION = _register(Setting(
    ("HOMEPORT_SPECULATION",), "auto", _speculation,
    "Speculative decoding: draft tokens from the request's own text (an edit's copied lines) and "
    "verify them in one step. auto: on where it cannot change an answer (the default setup on "
    "the CPU engine ./dev builds, or flash attention off); true: also with "
    "HOMEPORT_FLASH_ATTENTION=true (exact on that engine, with slower prompts; on a GPU a near "
    "tie may change) (default auto)",
))
CACHE_RAM = _register(Setting(
    ("HOMEPORT_CACHE_RAM",), -1, _byte_size,
    "Host memory each model may keep slot states in for conversations that return after "
    "another took their slot, e.g. 2GiB; 0 turns it off (default: a sixteenth of the memory "
    "models may use, at most 8GiB, and at most four times the model's K/V cache)",
    shown_default="auto",
))
MEMORY_LIMIT = _register(Setting(
    ("HOMEPORT_MEMORY_LIMIT",), 0, _byte_size,
    "Memory models may use, e.g. 8GiB (default 0: what the system reports available)",
))
GPU_OVERHEAD = _register(Setting(
    ("HOMEPORT_GPU_OVERHEAD", "OLLAMA_GPU_OVERHEAD"), 0, _byte_size,
    "Memory kept free on every GPU when placing layers, e.g. 512MiB (default 0)",
))
SCHED_SPREAD = _register(Setting(
    ("HOMEPORT_SCHED_SPREAD", "OLLAMA_SCHED_SPREAD"), False, _boolean,
    "Split every model over all GPUs and RPC workers, even when one would hold it (default false)",
))

# host:port as ggml-rpc takes it: split at the first colon and dialled over IPv4 only (its
# transport opens AF_INET sockets), so an IPv4 address or a host name, never IPv6.
_WORKER_ENDPOINT = re.compile(r"(?P<host>[A-Za-z0-9.\-]{1,253}):(?P<port>[0-9]{1,5})")
MAX_RPC_WORKERS = 16  # GGML_RPC_MAX_SERVERS
WORKER_PORT = 50052  # where `homeport worker` listens unless told otherwise, as ggml's rpc-server


def worker_endpoint(raw: str) -> str:
    """One RPC worker's ``host:port``, normalised; ValueError when it is not one."""
    match = _WORKER_ENDPOINT.fullmatch(raw.strip())
    if match is None or not 0 < int(match.group("port")) < 65536:
        raise ValueError(f"not a worker address (IPv4 or host name, then :port): "
                         f"{raw.strip()[:100]!r}")
    return f"{match.group('host').lower()}:{int(match.group('port'))}"


def _worker_endpoints(raw: str) -> tuple[str, ...]:
    workers = tuple(dict.fromkeys(worker_endpoint(part) for part in raw.split(",")
                                  if part.strip()))
    if len(workers) > MAX_RPC_WORKERS:
        raise ValueError(f"at most {MAX_RPC_WORKERS} workers")
    return workers


RPC_WORKERS: Setting[tuple[str, ...]] = _register(Setting(
    ("HOMEPORT_RPC_WORKERS",), (), _worker_endpoints,
    "RPC workers (`homeport worker` on other machines) whose devices models may be placed on, "
    "comma separated host:port (default none)",
))
MAX_BODY_BYTES = _register(Setting(
    ("HOMEPORT_MAX_BODY_BYTES",), 64 * 1024**2, _byte_size,
    "Largest JSON request body accepted; larger gets 413 (default 64MiB)",
    shown_default="64MiB",
))


# Connections (homeport.net.connection): a peer that opens sockets and sends nothing, or trickles
# its headers, holds them only this long, and only this many at once.
def _timeout_seconds(raw: str) -> float:
    try:
        seconds = parse_go_duration(raw)
    except ValueError:
        seconds = float(raw)
    if not 0 < seconds < math.inf:
        raise ValueError("must be a positive duration such as 10s or 500ms")
    return seconds


HEADER_TIMEOUT = _register(Setting(
    ("HOMEPORT_HEADER_TIMEOUT",), 10.0, _timeout_seconds,
    "How long a client may take to send a request's headers before its connection is closed "
    "(default 10s)", shown_default="10s",
))
IDLE_TIMEOUT = _register(Setting(
    ("HOMEPORT_IDLE_TIMEOUT",), 5.0, _timeout_seconds,
    "How long an idle keep-alive connection stays open between requests, in whole seconds "
    "(default 5s)",
    shown_default="5s",
))
MAX_CONNECTIONS_PER_PEER = _register(Setting(
    ("HOMEPORT_MAX_CONNECTIONS_PER_PEER",), 128, _positive_int,
    "Connections one client address may hold open at once; more are closed at once (default 128)",
))
ORIGINS: Setting[tuple[str, ...]] = _register(Setting(
    ("HOMEPORT_ORIGINS", "OLLAMA_ORIGINS"), (), _comma_list,
    "Extra browser origins allowed to call the server, comma separated",
))
LOG_LEVEL = _register(Setting(
    ("HOMEPORT_LOG_LEVEL", "OLLAMA_DEBUG"), "INFO", _log_level,
    "Log level: debug, info, warning or error (OLLAMA_DEBUG=1 means debug)",
))

UPSTREAMS: Setting[tuple[str, ...]] = _register(Setting(
    ("HOMEPORT_UPSTREAMS",), (), _comma_list,
    "Other homeport or Ollama servers whose models this one lists and routes to, comma separated "
    "URLs (also `serve --upstream URL` and [[upstream]] tables in config.toml)",
))
UPSTREAM_REFRESH = _register(Setting(
    ("HOMEPORT_UPSTREAM_REFRESH",), 3.0, _timeout_seconds,
    "How often each upstream's health and models are checked in the background (default 3s)",
    shown_default="3s",
))
DISCOVER_PEERS = _register(Setting(
    ("HOMEPORT_DISCOVER_PEERS",), True, _boolean,
    "With `serve --tailnet`, route to the tailnet's online peers that answer as homeport or "
    "Ollama on port 11434 (default true)",
))
PEER_DISCOVERY_INTERVAL = _register(Setting(
    ("HOMEPORT_PEER_DISCOVERY_INTERVAL",), 30.0, _timeout_seconds,
    "How often the tailnet's peers are looked for, and RPC workers probed, in the background "
    "(default 30s)",
    shown_default="30s",
))
DISCOVER_WORKERS = _register(Setting(
    ("HOMEPORT_DISCOVER_WORKERS",), True, _boolean,
    "With `serve --tailnet`, also place models on the tailnet's online peers that run "
    f"`homeport worker` (accept a connection on port {WORKER_PORT}), after HOMEPORT_RPC_WORKERS "
    "(default true)",
))
WORKER_DISCOVERY_PORT = _register(Setting(
    ("HOMEPORT_WORKER_DISCOVERY_PORT",), WORKER_PORT, _port,
    f"The port tailnet peers' workers are looked for on (default {WORKER_PORT})",
))

def _bundled_names(raw: str) -> tuple[str, ...]:
    from homeport.store.bundled import BUNDLED_NAMES

    names = tuple(dict.fromkeys(name.lower() for name in _comma_list(raw)))
    unknown = [name for name in names if name not in BUNDLED_NAMES]
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not bundled (choose from "
                         f"{', '.join(BUNDLED_NAMES)})")
    return names


BUNDLED_MODELS: Setting[tuple[str, ...]] = _register(Setting(
    ("HOMEPORT_BUNDLED_MODELS",), ("smollm2:135m",), _bundled_names,
    "Bundled models the server serves without a download, comma separated: smollm2:135m "
    "and gemma3:270m (a base model for raw completion, assembled once into the user's cache "
    "folder) (default smollm2:135m)",
    shown_default="smollm2:135m",
))

# --- files ------------------------------------------------------------------------------------
# A path setting left unset is Path("") (the same Path as "."): its default location is used.

DATA_DIR = _register(Setting(
    ("HOMEPORT_DATA_DIR",), Path(""), lambda raw: Path(raw).expanduser(),
    "Where homeport keeps its data: models, history, tokens, audit log (default: user data dir)",
))
CONFIG_DIR = _register(Setting(
    ("HOMEPORT_CONFIG_DIR",), Path(""), lambda raw: Path(raw).expanduser(),
    "Where homeport reads config.toml and policy.toml (default: user config dir)",
))
MODELS_DIR = _register(Setting(
    ("HOMEPORT_MODELS", "OLLAMA_MODELS"), Path(""), lambda raw: Path(raw).expanduser(),
    "The model store, in Ollama's layout (default: <data dir>/models)",
))
EXTRA_STORES: Setting[tuple[Path, ...]] = _register(Setting(
    ("HOMEPORT_EXTRA_STORES",), (), _path_list,
    "Other Ollama stores to serve read-only, separated by ':' "
    "(default ~/.ollama/models and /usr/share/ollama/.ollama/models)",
))
NOPRUNE = _register(Setting(
    ("HOMEPORT_NOPRUNE", "OLLAMA_NOPRUNE"), False, _boolean,
    "Keep unused layers and stale partial downloads when the server starts (default: remove them)",
))
PULL_CONNECTIONS = _register(Setting(
    ("HOMEPORT_PULL_CONNECTIONS",), 8, _positive_int,
    "Parallel ranged requests per blob while pulling a model (default 8)",
))
PULL_PART_SIZE = _register(Setting(
    ("HOMEPORT_PULL_PART_SIZE",), 64 * 1024**2, _byte_size,
    "Smallest part a pulled blob is split into; each part resumes on its own (default 64MiB)",
    shown_default="64MiB",
))

# --- who may connect (homeport.net) -----------------------------------------------------------

POLICY = _register(Setting(
    ("HOMEPORT_POLICY",), Path(""), lambda raw: Path(raw).expanduser(),
    "The access policy (TOML): who may connect, which models, limits (default <config dir>/policy.toml)",
))
TAILSCALED_SOCKET = _register(Setting(
    ("HOMEPORT_TAILSCALED_SOCKET",), Path(""), lambda raw: Path(raw).expanduser(),
    "tailscaled's LocalAPI socket, asked who each peer is "
    "(default /var/run/tailscale/tailscaled.sock; macOS /var/run/tailscaled.socket)",
))
TAILSCALE_INTERFACE = _register(Setting(
    ("HOMEPORT_TAILSCALE_INTERFACE",), "tailscale0", str,
    "Interface whose tailnet addresses `serve --tailnet` binds when tailscaled cannot say "
    "(default tailscale0)",
))
TAILNET_WAIT = _register(Setting(
    ("HOMEPORT_TAILNET_WAIT",), 0.0, lambda raw: max(0.0, parse_go_duration(raw)),
    "How long `serve --tailnet` waits for the tailnet to come up (default 0: for ever)",
))
AUDIT = _register(Setting(
    ("HOMEPORT_AUDIT",), True, _boolean,
    "Write one JSON line per request to <data dir>/audit/audit.jsonl (default true)",
))
AUDIT_CONTENT = _register(Setting(
    ("HOMEPORT_AUDIT_CONTENT",), False, _boolean,
    "Also write prompt and answer text to the audit log (default false)",
))
AUDIT_MAX_BYTES = _register(Setting(
    ("HOMEPORT_AUDIT_MAX_BYTES",), 10 * 1024**2, _byte_size,
    "Size at which the audit log is rotated (default 10MiB)",
    shown_default="10MiB",
))
AUDIT_BACKUPS = _register(Setting(
    ("HOMEPORT_AUDIT_BACKUPS",), 5, _non_negative_int,
    "Rotated audit files kept (default 5)",
))

# --- the client side --------------------------------------------------------------------------

ENDPOINT = _register(Setting(
    ("OLLAMA_ENDPOINT",), "", str,
    "The server the client commands talk to (default http://localhost:11434)",
))
TOKEN = _register(Setting(
    ("HOMEPORT_TOKEN",), "", str,
    "Bearer token the client commands send to the server (default: the config file's token)",
    secret=True,
))
ANTHROPIC_API_KEY = _register(Setting(
    ("ANTHROPIC_API_KEY",), "", str,
    "API key of the anthropic adapters (default: api_key in the config file)",
    secret=True,
))
ANTHROPIC_BASE_URL = _register(Setting(
    ("ANTHROPIC_BASE_URL",), "", str,
    "Where the anthropic adapters send requests (default https://api.anthropic.com)",
))


def _path_set(setting: Setting[Path]) -> Path | None:
    """A path setting's value, or None when it is unset (Path(""): its default applies)."""
    value = setting.get()
    return None if value == Path("") else value


def data_dir() -> Path:
    """The one folder every stored file hangs off (models, history, tokens, audit)."""
    return _path_set(DATA_DIR) or Path(platformdirs.user_data_dir("homeport", appauthor=False))


def config_dir() -> Path:
    return _path_set(CONFIG_DIR) or Path(platformdirs.user_config_dir("homeport", appauthor=False))


def models_dir() -> Path:
    return _path_set(MODELS_DIR) or data_dir() / "models"


def extra_store_dirs() -> tuple[Path, ...]:
    """Read-only Ollama stores whose models are served without copying."""
    value, source = EXTRA_STORES.lookup()
    if source != "default":
        return value
    if env_value("HOMEPORT_EXTRA_STORES") == "" and "HOMEPORT_EXTRA_STORES" in os.environ:
        return ()  # set but empty: the caller wants none
    return (Path.home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models"))


def policy_file() -> tuple[Path, bool]:
    """The policy file, and whether it was named explicitly (then it must exist)."""
    configured = _path_set(POLICY)
    return (configured, True) if configured else (config_dir() / "policy.toml", False)


def tailscaled_socket() -> Path:
    configured = _path_set(TAILSCALED_SOCKET)
    if configured:
        return configured
    if sys.platform == "darwin":
        return Path("/var/run/tailscaled.socket")
    return Path("/var/run/tailscale/tailscaled.sock")


def tokens_file() -> Path:
    return data_dir() / "tokens.json"


def audit_dir() -> Path:
    return data_dir() / "audit"


def config_file() -> Path:
    return config_dir() / "config.toml"


def read_config_file() -> dict[str, Any]:
    """The user's config.toml as a dict ({} when absent); a broken file raises ConfigError."""
    path = config_file()
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def describe_settings() -> list[tuple[str, str, str]]:
    """(variable names, effective value, description) for every registered setting."""
    rows = []
    for setting in REGISTRY:
        value, source = setting.lookup()
        shown = setting.shown_default if source == "default" and setting.shown_default else value
        if setting.secret:
            shown = "set" if value else ""
        if isinstance(shown, tuple):
            shown = ",".join(str(item) for item in shown)
        rows.append((" / ".join(setting.names), f"{shown}" if str(shown) else "-",
                     setting.description))
    return rows
