"""The policy file: its TOML schema, and loading it with errors that name the line.

    [defaults]                      # for every rule and token that does not say otherwise
    models = ["*"]
    admin = false
    requests_per_minute = 60        # also: concurrent_requests, tokens_per_minute, max_num_ctx

    [tailnet]
    owner = true                    # the machine owner's own (untagged) devices: everything
    capability = "example.com/cap/homeport"   # honour this grant from the tailnet policy

    [[allow]]                       # first rule that matches the caller decides
    logins = ["alice@example.com"]  # also: user_ids, nodes, tags ("tag:ci")
    models = ["llama3*", "smollm2:*"]
    admin = true

    [http]
    hosts = ["gpu.home.arpa"]       # more names the server answers to (Host allow-list)
    origins = ["https://chat.example.com"]   # more browser origins (as OLLAMA_ORIGINS)

    [serve]
    proxy = "127.0.0.1"             # `tailscale serve` in front; or "unix:/run/homeport.sock"
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from homeport.errors import ConfigError
from homeport.net.addresses import parse_ip


def _model_glob(value: str) -> str:
    if not value or any(char.isspace() for char in value):
        raise ValueError(f'{value!r} is not a model name pattern such as "llama3*" or "*"')
    return value


def _tag_name(value: str) -> str:
    if not re.fullmatch(r"tag:[A-Za-z0-9][A-Za-z0-9_-]*", value):
        raise ValueError(f'{value!r} is not a tag; tags are written "tag:ci"')
    return value


ModelGlob = Annotated[str, AfterValidator(_model_glob)]
TagName = Annotated[str, AfterValidator(_tag_name)]
Count = Annotated[int, Field(gt=0)]
_CAPABILITY = re.compile(r"^[a-z0-9.-]+\.[a-z]{2,}/cap/[A-Za-z0-9_.-]+$")


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class LimitsTable(_Table):
    concurrent_requests: Count | None = None
    requests_per_minute: Count | None = None
    tokens_per_minute: Count | None = None
    max_num_ctx: Annotated[int, Field(ge=256)] | None = None


class DefaultsTable(LimitsTable):
    models: list[ModelGlob] = Field(default_factory=lambda: ["*"])
    admin: bool = False


class RuleTable(LimitsTable):
    name: str = ""
    logins: list[Annotated[str, StringConstraints(min_length=1)]] = Field(default_factory=list)
    user_ids: list[int] = Field(default_factory=list)
    nodes: list[Annotated[str, StringConstraints(min_length=1)]] = Field(default_factory=list)
    tags: list[TagName] = Field(default_factory=list)
    models: list[ModelGlob] | None = None
    admin: bool | None = None

    @model_validator(mode="after")
    def _matches_someone(self) -> RuleTable:
        if not (self.logins or self.user_ids or self.nodes or self.tags):
            raise ValueError("an [[allow]] rule needs logins, user_ids, nodes or tags")
        return self


class TailnetTable(_Table):
    owner: bool = True
    capability: str | None = None
    # Nodes whose X-Homeport-Forwarded-For is believed: "tag:NAME" or a node name.
    forwarders: list[str] = []

    @field_validator("capability")
    @classmethod
    def _capability_name(cls, value: str | None) -> str | None:
        if value is not None and not _CAPABILITY.match(value):
            raise ValueError('a capability looks like "example.com/cap/homeport"')
        return value


class HttpTable(_Table):
    hosts: list[Annotated[str, StringConstraints(min_length=1, pattern=r"^[^\s/]+$")]] = Field(
        default_factory=list)
    origins: list[Annotated[str, StringConstraints(min_length=1)]] = Field(default_factory=list)


class ServeTable(_Table):
    proxy: str | None = None

    @field_validator("proxy")
    @classmethod
    def _proxy_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith("unix:"):
            if not value[5:].startswith("/"):
                raise ValueError('a Unix socket proxy is written "unix:/absolute/path"')
            return value
        address = parse_ip(value)
        if address is None or not address.is_loopback:
            raise ValueError('proxy must be a loopback address ("127.0.0.1", "::1") or '
                             '"unix:/path/to/socket": a remote proxy could claim any identity')
        return str(address)


class PolicyFile(_Table):
    defaults: DefaultsTable = Field(default_factory=DefaultsTable)
    tailnet: TailnetTable = Field(default_factory=TailnetTable)
    allow: list[RuleTable] = Field(default_factory=list)
    http: HttpTable = Field(default_factory=HttpTable)
    serve: ServeTable = Field(default_factory=ServeTable)


def parse_policy(text: str, source: str = "policy.toml") -> PolicyFile:
    """Validate policy text; ConfigError names ``source``, the line and what is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        return PolicyFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = tuple(first.get("loc", ()))
        line = locate_line(text, location)
        where = f", line {line}" if line else ""
        raise ConfigError(f"{source}{where}: {_describe(location, first)}") from None


def load_policy_file(path: Path) -> PolicyFile:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"policy file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"policy file {path} cannot be read: {exc}") from None
    return parse_policy(text, str(path))


def _describe(location: tuple[Any, ...], error: Any) -> str:
    dotted = ""
    for part in location:
        dotted += f"[{part + 1}]" if isinstance(part, int) else (f".{part}" if dotted else part)
    if error.get("type") == "extra_forbidden":
        return f"unknown setting {dotted!r}"
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{dotted}: {message}" if dotted else message


# --- finding the line a validation error is about ----------------------------------------------

_ARRAY_TABLE = re.compile(r"^\s*\[\[\s*([^\]]+?)\s*\]\]")
_TABLE = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+(?:\s*\.\s*[A-Za-z0-9_-]+)*)\s*=")  # bare keys only
_STRINGS = re.compile(r""""(?:\\.|[^"\\])*"|'[^']*'""")


def _key_parts(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split("."))


def locate_line(text: str, location: tuple[Any, ...]) -> int | None:
    """The 1-based line that defines ``location`` (a pydantic error path), or its nearest parent.

    Tracks table headers (``[a]``, ``[[a]]`` with their index) and ``key =`` lines, skipping lines
    inside multi-line arrays; good for the policy's plain layout, not a full TOML parser.
    """
    lines: dict[tuple[Any, ...], int] = {}
    table: tuple[Any, ...] = ()
    counts: dict[tuple[str, ...], int] = {}
    depth = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _STRINGS.sub('""', raw).split("#")[0]
        if depth > 0:
            depth += line.count("[") - line.count("]")
            continue
        if match := _ARRAY_TABLE.match(line):
            name = _key_parts(match.group(1))
            counts[name] = counts.get(name, -1) + 1
            table = (*name, counts[name])
            lines.setdefault(table, number)
            lines.setdefault(name, number)
        elif match := _TABLE.match(line):
            table = _key_parts(match.group(1))
            lines.setdefault(table, number)
        elif match := _KEY.match(line):
            lines.setdefault((*table, *_key_parts(match.group(1))), number)
            rest = line[match.end():]
            depth = max(0, rest.count("[") - rest.count("]"))
    for end in range(len(location), 0, -1):
        found = lines.get(tuple(location[:end]))
        if found is not None:
            return found
    return None
