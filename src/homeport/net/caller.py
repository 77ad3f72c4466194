"""Who is calling and what they may do, as the guard hands it to the routes through the ASGI scope.

The guard decides who the caller is (``Caller``) before any route runs; routes only ask the caller
whether a model is allowed and how large a context it may load, and note what the request used in
its ``RequestRecord`` (the audit line and the tokens-per-minute limit read it afterwards).
"""

from __future__ import annotations

import fnmatch
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal

from homeport.errors import ForbiddenError

CALLER_KEY = "homeport.caller"
RECORD_KEY = "homeport.record"

CallerKind = Literal["local", "tailnet", "token", "proxy"]


@dataclass(frozen=True)
class Limits:
    """Per-identity limits; None means no limit of that kind."""

    concurrent_requests: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_num_ctx: int | None = None


@dataclass(frozen=True)
class Grant:
    """What an identity may do, and where the permission came from (for messages that help)."""

    models: tuple[str, ...] = ("*",)
    admin: bool = False
    limits: Limits = Limits()
    # How to widen the grant, with {model} filled in, e.g. 'add "{model}" to models in ...'.
    model_hint: str = ""
    admin_hint: str = ""

    def allows_model(self, display_name: str) -> bool:
        """Whether a glob matches the model's name, written in full or without ``:latest``."""
        name = display_name.lower()
        names = {name, name.removesuffix(":latest")}
        return any(fnmatch.fnmatchcase(candidate, pattern.lower())
                   for pattern in self.models for candidate in names)


EVERYTHING = Grant(models=("*",), admin=True)


@dataclass(frozen=True)
class Caller:
    """An identified caller: the machine itself, a tailnet identity, or a token."""

    kind: CallerKind
    identity: str  # "local", a login name, "tag:ci", or "token:NAME"
    node: str = ""
    grant: Grant = EVERYTHING

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    def check_model(self, display_name: str) -> None:
        """Raise 403 (naming what to change) unless the caller may use this model."""
        if self.grant.allows_model(display_name):
            return
        hint = self.grant.model_hint.format(model=display_name)
        raise ForbiddenError(f"{self.identity} may not use model '{display_name}'"
                             + (f"; {hint}" if hint else ""))


LOCAL = Caller(kind="local", identity="local")


@dataclass
class RequestRecord:
    """What one request did, filled in as it goes; the audit line is written from it."""

    identity: str = ""
    node: str = ""
    via: str = ""
    address: str = ""  # the TCP peer, or the client a trusted proxy forwarded
    model: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    keep_text: bool = False  # the owner asked for prompts and answers in the audit log
    prompt: str | None = None
    answer: list[str] = field(default_factory=list)

    def note_caller(self, caller: Caller) -> None:
        self.identity, self.node, self.via = caller.identity, caller.node, caller.kind


def caller_of(scope: MutableMapping[str, Any]) -> Caller:
    """The caller the guard put into the scope; the machine itself when no guard ran."""
    caller = scope.get(CALLER_KEY)
    return caller if isinstance(caller, Caller) else LOCAL


def record_of(scope: MutableMapping[str, Any]) -> RequestRecord:
    """The request's record (a throwaway one when no audit layer runs)."""
    record = scope.get(RECORD_KEY)
    if not isinstance(record, RequestRecord):
        record = RequestRecord()
        scope[RECORD_KEY] = record
    return record
