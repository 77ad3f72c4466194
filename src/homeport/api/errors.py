"""Errors become HTTP here and nowhere else: one JSON shape for /api (Ollama), one for /v1 (OpenAI),
one for /v1/messages (Anthropic).

Before a stream starts the status carries the error; after, the stream encoders add one error
record (see ``ollama_routes`` and ``openai_routes``).
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from homeport.errors import HomeportError, RateLimitedError, ServerBusyError

log = logging.getLogger(__name__)

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def is_openai_path(path: str) -> bool:
    return path.lstrip("/").startswith("v1/")


def openai_error_body(status: int, message: str) -> dict[str, object]:
    return {"error": {"message": message, "type": _OPENAI_TYPES.get(status, "api_error"),
                      "param": None, "code": None}}


_ANTHROPIC_TYPES = {**_OPENAI_TYPES, 413: "request_too_large", 503: "overloaded_error"}


def is_anthropic_path(path: str) -> bool:
    return path.lstrip("/").startswith("v1/messages")


def anthropic_error_body(status: int, message: str) -> dict[str, object]:
    return {"type": "error",
            "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}


def error_response(path: str, status: int, message: str,
                   retry_after: int | None = None) -> JSONResponse:
    body: dict[str, object]
    if is_anthropic_path(path):
        body = anthropic_error_body(status, message)
    elif is_openai_path(path):
        body = openai_error_body(status, message)
    else:
        body = {"error": message}
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(body, status_code=status, headers=headers)


async def homeport_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HomeportError)
    retry_after = exc.retry_after if isinstance(exc, ServerBusyError | RateLimitedError) else None
    if exc.status >= 500 and not isinstance(exc, ServerBusyError):
        log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
    return error_response(request.url.path, exc.status, exc.message, retry_after)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "404 page not found", 405: "405 method not allowed"}
    message = messages.get(exc.status_code, str(exc.detail))
    return error_response(request.url.path, exc.status_code, message)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path)
    return error_response(request.url.path, 500, f"internal error: {type(exc).__name__}")
