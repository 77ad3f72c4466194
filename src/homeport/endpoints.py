"""Addresses: where ``homeport serve`` binds, and which server a client talks to.

``OLLAMA_HOST``-style values are parsed exactly as Ollama's envconfig.Host parses them. The
client's endpoint (``--endpoint``, ``OLLAMA_ENDPOINT``, ``OLLAMA_HOST``, the config file, then the
default) and its bearer token are resolved here and nowhere else.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from homeport.config import HOST, TOKEN, config_file, env_value, read_config_file
from homeport.errors import ConfigError
from homeport.secrets import resolve_secret

log = logging.getLogger(__name__)

ConfigFileReader = Callable[[], dict[str, Any]]  # config.read_config_file, or a cached one

DEFAULT_PORT = 11434
DEFAULT_ENDPOINT = f"http://localhost:{DEFAULT_PORT}"


@dataclass(frozen=True)
class HostAddress:
    """A parsed OLLAMA_HOST-style address."""

    scheme: str
    host: str
    port: int
    path: str = ""

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        suffix = f"/{self.path}" if self.path else ""
        return f"{self.scheme}://{host}:{self.port}{suffix}"

    def connectable(self) -> HostAddress:
        """This address with 0.0.0.0 / :: replaced by loopback, so a client can dial it."""
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            return self
        if ip.is_unspecified:
            loopback = "127.0.0.1" if ip.version == 4 else "::1"
            return HostAddress(self.scheme, loopback, self.port, self.path)
        return self


def parse_host(value: str, source: str = "OLLAMA_HOST") -> HostAddress:
    """Parse ``[scheme://]host[:port][/path]`` exactly as Ollama's envconfig.Host does.

    No scheme means http and port 11434; an explicit http:// or https:// without a port means
    80 or 443. An empty host means 127.0.0.1; a bad port falls back to the default with a warning
    that names ``source``.
    """
    text = value.strip().strip("\"'")
    default_port = str(DEFAULT_PORT)
    scheme, sep, hostport = text.partition("://")
    if not sep:
        scheme, hostport = "http", text
        if text == "ollama.com":
            scheme, hostport = "https", "ollama.com:443"
    elif scheme == "http":
        default_port = "80"
    elif scheme == "https":
        default_port = "443"
    hostport, _, path = hostport.partition("/")
    split = _split_host_port(hostport)
    if split is None:
        host, port = "127.0.0.1", default_port
        bare = hostport.strip("[]")
        try:
            host = str(ipaddress.ip_address(bare))
        except ValueError:
            if hostport:
                host = hostport
    else:
        host, port = split
    if not port.isdigit() or int(port) > 65535:
        log.warning("%s: invalid port %r, using the default %s", source, port, default_port)
        port = default_port
    return HostAddress(scheme, host, int(port), path)


def _split_host_port(hostport: str) -> tuple[str, str] | None:
    """Go's net.SplitHostPort: None where it would return an error."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or end + 1 >= len(hostport) or hostport[end + 1] != ":":
            return None
        host, port = hostport[1:end], hostport[end + 2:]
        if ":" in port:
            return None
        return host, port
    if hostport.count(":") != 1:
        return None
    host, port = hostport.split(":")
    return host, port


def bind_address() -> HostAddress:
    """Where ``homeport serve`` listens: HOMEPORT_HOST, then OLLAMA_HOST, else 127.0.0.1:11434."""
    address = parse_host(HOST.get())
    if address.host == "":
        address = HostAddress(address.scheme, "0.0.0.0", address.port, address.path)
    return address


@dataclass(frozen=True)
class Endpoint:
    """The server a client talks to, where its address came from, and the headers it needs."""

    url: str
    source: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # may hold a token
    token_source: str = "not set"


def resolve_endpoint(explicit: str | None = None) -> Endpoint:
    """The client's server: --endpoint, OLLAMA_ENDPOINT, OLLAMA_HOST, config file, default.

    Each value is parsed as Ollama parses OLLAMA_HOST; a scheme other than http(s) is a
    ConfigError naming its source. The bearer token, when one is configured, rides along.
    """
    file = functools.cache(read_config_file)  # read once, and only if either needs it
    url, source = endpoint_url(explicit, file=file)
    token, token_source = resolve_token(file)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return Endpoint(url, source, headers, token_source)


def endpoint_url(explicit: str | None = None, environment: bool = True,
                 file: ConfigFileReader = read_config_file) -> tuple[str, str]:
    """The endpoint's URL and its source, without the token (see ``resolve_endpoint``).

    ``environment=False`` skips the variables: what the flag or the config file say.
    """
    if explicit is not None and explicit.strip():
        return _endpoint_url(explicit, "--endpoint"), "--endpoint"
    for name in ("OLLAMA_ENDPOINT", "OLLAMA_HOST") if environment else ():
        raw = env_value(name)
        if raw:
            return _endpoint_url(raw, name), name
    configured = file().get("endpoint")
    source = f"{config_file()} (endpoint)"
    if configured is not None and not isinstance(configured, str):
        raise ConfigError(f"{source} must be a string such as \"http://100.64.0.1:11434\"")
    if configured and configured.strip():
        return _endpoint_url(configured, source), source
    return DEFAULT_ENDPOINT, "default"


def _endpoint_url(raw: str, source: str) -> str:
    address = parse_host(raw, source).connectable()
    if address.scheme not in ("http", "https"):
        raise ConfigError(f"{source}: unsupported scheme {address.scheme!r} in {raw.strip()!r}; "
                          "use http:// or https://")
    if address.host == "":
        address = HostAddress(address.scheme, "127.0.0.1", address.port, address.path)
    return address.url.rstrip("/")


def resolve_token(file: ConfigFileReader = read_config_file) -> tuple[str, str]:
    """The bearer token for the server and where it came from ("" and "not set" when none).

    HOMEPORT_TOKEN wins; else the config file's ``token``, which must be a reference
    (``env:NAME`` or ``cmd:COMMAND``) and is resolved only now.
    """
    value, source = TOKEN.lookup()
    if value:
        return value, source
    reference = file().get("token")
    if reference is None:
        return "", "not set"
    where = f"`token` in {config_file()}"
    return resolve_secret(reference, where), f"{config_file()} (token = {reference})"


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
