"""Reading a JSON request body: bounded in size, parsed, validated into a typed request.

This is the one place JSON from a caller is parsed (``parse_json_text`` serves JSON nested in a
field, such as a tool call's arguments), so two guarantees hold for everything downstream:
nesting is at most ``MAX_JSON_DEPTH`` deep (Python code that walks a value, such as pydantic,
Jinja or the grammar builder, never meets a RecursionError), and no string holds a lone surrogate
(``"\\ud800"`` is valid JSON but cannot be encoded as UTF-8). Lone surrogates become U+FFFD, as
Go's encoding/json (Ollama's) does.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from homeport.errors import BadRequestError, PayloadTooLargeError

RequestModel = TypeVar("RequestModel", bound=BaseModel)

# Deeper than any real request (a JSON schema in "format" or a tool's parameters nests a few dozen
# levels at most) and far below Python's recursion limit for the code that walks parsed values.
MAX_JSON_DEPTH = 128
TOO_DEEP = f"request body nests too deeply (at most {MAX_JSON_DEPTH} levels of arrays and objects)"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads joins valid pairs into one character


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


def _clean_text(text: str) -> str:
    return _LONE_SURROGATE.sub("\ufffd", text) if _LONE_SURROGATE.search(text) else text


def _clean_in_place(data: Any) -> None:
    """Refuse nesting deeper than ``MAX_JSON_DEPTH`` and replace lone surrogates in every string,
    keys included; iterative, so depth costs no stack."""
    pending: list[tuple[dict[str, Any] | list[Any], int]] = []
    if isinstance(data, dict | list):
        pending.append((data, 1))
    while pending:
        container, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            raise BadRequestError(TOO_DEEP)
        if isinstance(container, dict):
            for key in [key for key in container if _LONE_SURROGATE.search(key)]:
                container[_clean_text(key)] = container.pop(key)
            items: Any = container.items()
        else:
            items = enumerate(container)
        for slot, value in items:
            if isinstance(value, str):
                cleaned = _clean_text(value)
                if cleaned is not value:
                    container[slot] = cleaned  # replacing a value keeps the dict's size
            elif isinstance(value, dict | list):
                pending.append((value, depth + 1))


def parse_json_text(text: str | bytes) -> Any:
    """Caller-sent JSON as Python values, bounded in depth and free of lone surrogates; any
    malformed input is a ``BadRequestError``."""
    try:
        data: Any = json.loads(text)
    except RecursionError:  # nesting deeper than the C parser's stack allows
        raise BadRequestError(TOO_DEEP) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"invalid JSON in request body: {exc}") from None
    if isinstance(data, str):
        return _clean_text(data)
    _clean_in_place(data)
    return data


async def read_json(request: Request, model: type[RequestModel], limit: int) -> RequestModel:
    body = await read_body(request, limit)
    if not body.strip():
        raise BadRequestError("missing request body")
    data = parse_json_text(body)
    if not isinstance(data, dict):
        raise BadRequestError("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequestError(describe_validation_error(exc)) from None
