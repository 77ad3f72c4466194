"""Defences against web pages: the Host allow-list (DNS rebinding) and the Origin allow-list (CORS).

Whois vouches for a device, not for a page running in its browser. A page on evil.example that
rebinds its name to this machine sends ``Host: evil.example``: refused. A page that calls the server
from a foreign origin sends ``Origin: https://evil.example``: refused, and never given CORS headers.
Allowed origins are Ollama's defaults (localhost and the app schemes), ``OLLAMA_ORIGINS`` and the
policy's ``[http] origins``; a bare ``*`` is ignored, since no CORS wildcard is ever sent.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from homeport.errors import ForbiddenError
from homeport.net.addresses import parse_ip
from homeport.net.machine import MachineView

log = logging.getLogger(__name__)

_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "0.0.0.0", "[::1]")
_APP_ORIGINS = ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")


def default_origins() -> list[str]:
    """Ollama's built-in allowed origins."""
    patterns = []
    for host in _LOOPBACK_HOSTS:
        patterns += [f"http://{host}", f"https://{host}", f"http://{host}:*",
                     f"https://{host}:*"]
    return [*patterns, *_APP_ORIGINS]


def origin_regex(extra: Iterable[str]) -> re.Pattern[str]:
    """One pattern matching every allowed origin (globs as OLLAMA_ORIGINS writes them)."""
    patterns = default_origins()
    for item in extra:
        if item.strip() == "*":
            log.warning("ignoring the origin '*': homeport never allows every web page; "
                        "list the origins that may call it")
            continue
        patterns.append(item.strip().rstrip("/"))
    return re.compile("|".join(f"(?:{fnmatch.translate(pattern)})" for pattern in patterns),
                      re.IGNORECASE)


# RFC 3986's host: a bracketed IPv6 literal, or a name or IPv4 address of unreserved characters
# (percent-encoding and sub-delims are legal there, but no browser sends them and none of our names
# has them); then an optional port of digits only.
_HOST_HEADER = re.compile(r"(?P<host>\[[0-9a-f:.]+\]|[a-z0-9._~-]+)(?::[0-9]*)?")


def host_name(header: str) -> str | None:
    """The host part of a Host header, lower-cased, without port or trailing dot; None when the
    header is not ``host[:port]`` as RFC 3986 writes it (``localhost:1.evil.com``,
    ``127.0.0.1/evil.com``, ``[::1].evil.com``)."""
    match = _HOST_HEADER.fullmatch(header.strip().lower())
    if match is None:
        return None
    host = match.group("host")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
    return host.rstrip(".")


@dataclass(frozen=True)
class BrowserRules:
    extra_hosts: frozenset[str]
    origins: re.Pattern[str]

    def check_host(self, header: str | None, machine: MachineView) -> None:
        """403 unless the Host names this machine (a missing Host is no browser: allowed)."""
        if not header:
            return
        host = host_name(header)
        if host is None:
            raise ForbiddenError("malformed Host header: expected host[:port], a name, an IPv4 "
                                 "address or a bracketed IPv6 address")
        address = parse_ip(host)
        if address is not None:
            allowed = machine.is_own_address(address) or host in self.extra_hosts
        else:
            allowed = (host in machine.names or host.endswith(".localhost")
                       or host in self.extra_hosts
                       or any(fnmatch.fnmatchcase(host, pattern) for pattern in self.extra_hosts
                              if "*" in pattern))
        if not allowed:
            raise ForbiddenError(
                f"this server does not answer to the name {host!r} (a page may be trying DNS "
                f'rebinding); if it is this machine\'s name, add hosts = ["{host}"] to [http] in '
                "the policy file (HOMEPORT_POLICY)")

    def check_origin(self, origin: str | None) -> None:
        if origin is None or self.origin_allowed(origin):
            return
        raise ForbiddenError(
            f"requests from web pages at {origin} are not allowed; if you trust it, add it to "
            "OLLAMA_ORIGINS or to origins in [http] in the policy file")

    def origin_allowed(self, origin: str) -> bool:
        return self.origins.fullmatch(origin.rstrip("/")) is not None


def browser_rules(policy_hosts: Iterable[str], policy_origins: Iterable[str],
                  env_origins: Iterable[str], bind_host: str = "") -> BrowserRules:
    hosts = {host.lower().rstrip(".") for host in policy_hosts}
    if bind_host and parse_ip(bind_host) is None:
        hosts.add(bind_host.lower())
    return BrowserRules(frozenset(hosts), origin_regex([*env_origins, *policy_origins]))
