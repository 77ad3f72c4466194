"""Reading a JSON request body: bounded in size, parsed, validated into a typed request."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from homeport.errors import BadRequestError, PayloadTooLargeError

RequestModel = TypeVar("RequestModel", bound=BaseModel)


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) anything over ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body too large (limit {limit} bytes)")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body too large (limit {limit} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def describe_validation_error(error: ValidationError) -> str:
    """One line naming the first bad field: ``field "messages": Input should be a valid list``."""
    first = error.errors()[0]
    location = ".".join(str(part) for part in first.get("loc", ()) if part != "function-plain")
    message = str(first.get("msg", "invalid value"))
    if isinstance(first.get("ctx", {}).get("error"), ValueError):
        message = str(first["ctx"]["error"])
    message = message.removeprefix("Value error, ")
    return f'invalid value for "{location}": {message}' if location else message


async def read_json(request: Request, model: type[RequestModel], limit: int) -> RequestModel:
    body = await read_body(request, limit)
    if not body.strip():
        raise BadRequestError("missing request body")
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"invalid JSON in request body: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequestError("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequestError(describe_validation_error(exc)) from None
