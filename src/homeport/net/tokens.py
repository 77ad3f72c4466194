"""Bearer tokens for callers outside the tailnet (scripts, CI, a machine on the LAN).

A token is ``homeport_`` and 43 random URL-safe characters; it is shown once, when created, and
only its SHA-256 is stored (``<data dir>/tokens.json``, mode 0600). A token this random needs no
slow hash: nobody can guess a preimage. Checking hashes the presented token and compares it with
every stored hash in constant time, so timing says nothing about which tokens exist.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from homeport.errors import (
    BadRequestError,
    ConfigError,
    HomeportError,
    NotFoundError,
    UnauthorizedError,
)
from homeport.fileio import atomic_write

PREFIX = "homeport_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

TokenState = Literal["active", "expired", "revoked"]


class TokenExistsError(HomeportError):
    status = 409


class Token(BaseModel):
    """A stored token (its hash, never the token itself), as the token file keeps it."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    name: str
    sha256: str
    models: tuple[str, ...] = ("*",)
    admin: bool = False
    created: datetime
    expires: datetime | None = None
    revoked: datetime | None = None

    def state(self, now: datetime | None = None) -> TokenState:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and (now or datetime.now(UTC)) >= self.expires:
            return "expired"
        return "active"


class _File(BaseModel):
    model_config = ConfigDict(extra="ignore")
    version: int = 1
    tokens: list[Token] = Field(default_factory=list)


def looks_like_token(text: str) -> bool:
    """Whether a bearer value is meant as a homeport token (other values, such as the "ollama"
    key OpenAI clients must send, are not tokens and are ignored for tailnet callers)."""
    return text.startswith(PREFIX)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """The token file: read, add, revoke. Writes replace the file atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def stamp(self) -> tuple[int, int] | None:
        """Changes when the file does (the server re-reads it then)."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return None
        return (info.st_mtime_ns, info.st_size)

    def tokens(self) -> list[Token]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        try:
            parsed = _File.model_validate_json(raw)
        except ValidationError:
            raise ConfigError(f"the token file {self.path} is damaged; move it away and create "
                              "the tokens again") from None
        return parsed.tokens

    def create(self, name: str, models: tuple[str, ...] = ("*",), admin: bool = False,
               lifetime: float | None = None) -> tuple[str, Token]:
        """A new token and its record; the token text is returned once and never stored."""
        if not _NAME.match(name):
            raise BadRequestError(f"invalid token name {name!r}: use letters, digits, '.', '_' or '-'")
        existing = self.tokens()
        if any(token.name == name and token.state() == "active" for token in existing):
            raise TokenExistsError(f"a token named '{name}' exists; revoke it first "
                                   f"(`homeport token revoke {name}`) or choose another name")
        secret = PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(UTC).replace(microsecond=0)
        expires = now + timedelta(seconds=lifetime) if lifetime else None
        token = Token(name=name, sha256=digest(secret), models=models, admin=admin, created=now,
                      expires=expires)
        self._write([*existing, token])  # revoked and expired ones stay, for `token list`
        return secret, token

    def revoke(self, name: str) -> Token:
        existing = self.tokens()
        for index, token in enumerate(existing):
            if token.name == name and token.revoked is None:
                revoked = token.model_copy(
                    update={"revoked": datetime.now(UTC).replace(microsecond=0)})
                existing[index] = revoked
                self._write(existing)
                return revoked
        raise NotFoundError(f"no token named '{name}' (see `homeport token list`)")

    def _write(self, tokens: list[Token]) -> None:
        text = json.dumps(_File(tokens=tokens).model_dump(mode="json"), indent=2) + "\n"
        atomic_write(self.path, text.encode("utf-8"), mode=0o600)  # only its owner reads it


class TokenChecker:
    """The server's view of the token file, re-read whenever the file changes."""

    def __init__(self, store: TokenStore) -> None:
        self.store = store
        self._stamp: tuple[int, int] | None = None
        self._tokens: list[Token] = []

    def _current(self) -> list[Token]:
        stamp = self.store.stamp()
        if stamp != self._stamp:
            self._tokens = self.store.tokens()
            self._stamp = stamp
        return self._tokens

    def active_count(self) -> int:
        return sum(token.state() == "active" for token in self._current())

    def verify(self, presented: str) -> Token:
        """The token's record, or 401 saying why it does not work."""
        wanted = digest(presented).encode()
        found: Token | None = None
        for token in self._current():
            if hmac.compare_digest(wanted, token.sha256.encode()):
                found = token
        if found is None:
            raise UnauthorizedError("invalid token: it is not one this server issued; create one "
                                    "on the server with `homeport token create NAME`")
        state = found.state()
        if state == "revoked":
            raise UnauthorizedError(f"token '{found.name}' was revoked; ask the server's owner "
                                    "for a new one")
        if state == "expired":
            assert found.expires is not None
            raise UnauthorizedError(f"token '{found.name}' expired on "
                                    f"{found.expires:%Y-%m-%d %H:%M} UTC; ask the server's owner "
                                    "for a new one")
        return found
