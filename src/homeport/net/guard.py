"""The ASGI guard: every request passes here before any route runs.

Order: Host allow-list, Origin allow-list, CORS preflight (answered without credentials, as browsers
send none), then who is calling, then admin-only paths, then per-identity limits. A refusal is an
error response (401/403/429) and no route runs, so a denied caller never gets model output; the app
hands the guard the function that puts the refusal in the API's own shape, since this layer knows
no wire shapes. The caller goes into the scope for the routes (model globs, num_ctx cap); when the
response has ended, the tokens it used are counted and one audit line is written.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from homeport.asgi import StatusRecordingSend
from homeport.errors import ForbiddenError, HomeportError, RateLimitedError, UnauthorizedError
from homeport.net.caller import CALLER_KEY, RECORD_KEY, Caller, RequestRecord
from homeport.net.connection import memo_of
from homeport.net.gate import Gate
from homeport.net.identify import RequestFacts, strip_identity_headers
from homeport.net.machine import MachineView

log = logging.getLogger(__name__)

# Model management, by path, whichever module serves it: admin-only for remote callers.
ADMIN_PATHS = frozenset({"/api/pull", "/api/create", "/api/copy", "/api/delete", "/api/push",
                         "/metrics"})
ADMIN_PREFIXES = ("/api/blobs/",)
CORS_METHODS = ["GET", "POST", "DELETE", "HEAD", "OPTIONS"]


def is_admin_path(path: str) -> bool:
    return path.rstrip("/") in ADMIN_PATHS or path.startswith(ADMIN_PREFIXES)


class ErrorRenderer(Protocol):
    """An error as the API that serves ``path`` writes errors (Ollama's, OpenAI's, Anthropic's)."""

    def __call__(self, path: str, status: int, message: str) -> Response: ...


class Guard:
    def __init__(self, app: ASGIApp, gate: Gate, render_error: ErrorRenderer) -> None:
        self.app = app
        self.gate = gate
        self.render_error = render_error
        self._cors: tuple[Any, CORSMiddleware] | None = None

    def _cors_around(self, app: ASGIApp) -> CORSMiddleware:
        return CORSMiddleware(
            app, allow_origin_regex=self.gate.browser.origins.pattern,
            allow_methods=CORS_METHODS,
            # OpenAI's SDKs send a changing set of x-stainless-* headers: echo what is asked.
            allow_headers=["*"], allow_credentials=False, max_age=600)

    def _with_cors(self) -> CORSMiddleware:
        """Starlette's CORS layer around the app, rebuilt when a reload changes the origins."""
        origins = self.gate.browser.origins
        if self._cors is None or self._cors[0] is not origins:
            self._cors = (origins, self._cors_around(self.app))
        return self._cors[1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        client = scope.get("client")
        record = RequestRecord(address=str(client[0]) if client else "",
                               keep_text=self.gate.audit is not None and self.gate.audit.keep_text)
        scope[RECORD_KEY] = record
        send_status = StatusRecordingSend(send)
        caller: Caller | None = None
        browser_ok = False
        try:
            try:
                facts = RequestFacts.of(scope)  # before identity headers are stripped from scope
                machine = await self.gate.machine.current()
                preflight = self._check_browser(scope, facts, machine)
                browser_ok = True
                if preflight:
                    await self._with_cors()(scope, receive, send_status)
                    return
                caller = await self._admit(scope, facts, machine, record)
            except HomeportError as exc:
                await self._refuse(scope, receive, send_status, exc, browser_ok)
                return
            scope[CALLER_KEY] = caller
            await self._with_cors()(scope, receive, send_status)
        finally:
            if caller is not None:
                self.gate.limiter.finish(caller, record.tokens_in + record.tokens_out)
            if self.gate.audit is not None:
                self.gate.audit.write(record, scope["method"], scope["path"], send_status.status,
                                      time.perf_counter() - started)

    def _check_browser(self, scope: Scope, facts: RequestFacts, machine: MachineView) -> bool:
        """Host and Origin checks; True for a CORS preflight, which needs nothing more."""
        self.gate.browser.check_host(facts.headers.get("host"), machine)
        origin = facts.headers.get("origin")
        self.gate.browser.check_origin(origin)
        return (scope["method"] == "OPTIONS" and origin is not None
                and "access-control-request-method" in facts.headers)

    async def _admit(self, scope: Scope, facts: RequestFacts, machine: MachineView,
                     record: RequestRecord) -> Caller:
        strip_identity_headers(scope)
        caller = await self.gate.identifier.identify(facts, self.gate.policy, machine,
                                                     memo_of(scope), record)
        path = scope["path"]
        if not caller.is_local and is_admin_path(path) and not caller.grant.admin:
            hint = caller.grant.admin_hint
            raise ForbiddenError(f"{caller.identity} may not manage models ({path} is for admins)"
                                 + (f"; {hint}" if hint else ""))
        self.gate.limiter.admit(caller)
        return caller

    async def _refuse(self, scope: Scope, receive: Receive, send: Send,
                      exc: HomeportError, browser_ok: bool) -> None:
        """The refusal in the API's error shape; an allowed web page may read it (CORS)."""
        response = self.render_error(scope["path"], exc.status, exc.message)
        if isinstance(exc, RateLimitedError):
            response.headers["Retry-After"] = str(exc.retry_after)
        if isinstance(exc, UnauthorizedError):
            response.headers["WWW-Authenticate"] = 'Bearer realm="homeport"'
        log.debug("refused %s %s: %s", scope["method"], scope["path"], exc.message)
        await (self._cors_around(response) if browser_ok else response)(scope, receive, send)
