"""Model management: /api/pull, /api/create, /api/blobs/:digest, /api/copy, /api/delete, /api/push.

Pull streams Ollama's progress lines (``pulling manifest``, ``pulling <digest>`` with byte counts,
``verifying sha256 digest``, ``writing manifest``, ``removing unused layers``, ``success``); an error
after the stream started is one more ``{"error": ...}`` line, and with ``stream: false`` the status
carries it. Create does all its checks before answering, so its errors always carry a status.
The work itself is in ``homeport.store``; this module translates wire shapes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from homeport import config
from homeport.api import schemas
from homeport.api.body import read_json
from homeport.api.common import check_model, resolve_model, state_of
from homeport.api.streaming import NDJSON, StreamResponse, cancel_on_disconnect, ndjson_line
from homeport.engine.options import ModelOptions, apply_options
from homeport.errors import BadRequestError, HomeportError, UnsupportedError
from homeport.store.create import CreateSpec, create_model
from homeport.store.digests import normalize_digest
from homeport.store.download import DownloadSettings
from homeport.store.names import is_valid_name
from homeport.store.progress import Progress
from homeport.store.pull import pull_model
from homeport.store.record import is_jinja_template
from homeport.store.uploads import receive_blob

log = logging.getLogger(__name__)


def progress_json(progress: Progress) -> dict[str, Any]:
    """A progress line as Ollama writes it: empty and zero fields left out."""
    line: dict[str, Any] = {"status": progress.status}
    if progress.digest:
        line["digest"] = progress.digest
    if progress.total:
        line["total"] = progress.total
    if progress.completed:
        line["completed"] = progress.completed
    return line


async def _progress_lines(first: Progress, rest: AsyncGenerator[Progress, None]
                          ) -> AsyncIterator[bytes]:
    try:
        yield ndjson_line(progress_json(first))
        async for progress in rest:
            yield ndjson_line(progress_json(progress))
    except HomeportError as exc:
        yield ndjson_line({"error": exc.message})
    except Exception as exc:
        log.exception("a model transfer failed")
        yield ndjson_line({"error": f"internal error: {type(exc).__name__}"})
    finally:
        await rest.aclose()


async def _replay(lines: Iterable[Progress]) -> AsyncGenerator[Progress, None]:
    for line in lines:
        yield line


async def _drain(progress: AsyncIterator[Progress]) -> None:
    async for _ in progress:
        pass


def download_settings() -> DownloadSettings:
    return DownloadSettings(connections=config.PULL_CONNECTIONS.get(),
                            part_size=config.PULL_PART_SIZE.get())


# --- pull and push -------------------------------------------------------------------------------


async def pull(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, schemas.PullRequest, state.max_body_bytes)
    name = body.model or body.name
    if not name:
        raise BadRequestError("model is required")
    check_model(request, name)
    progress = pull_model(state.store, name, insecure=body.insecure,
                          settings=download_settings())
    first = await anext(progress)  # the name is checked before this line and before any traffic
    if body.stream is False:
        await cancel_on_disconnect(request.receive, _drain(progress))
        return JSONResponse({"status": "success"})
    return StreamResponse(_progress_lines(first, progress), NDJSON)


async def push(request: Request) -> Response:
    raise UnsupportedError(
        "push is not supported by homeport; push models to a registry with ollama push")


# --- create and blobs ----------------------------------------------------------------------------


def _create_spec(body: schemas.CreateRequest) -> CreateSpec:
    if body.modelfile is not None and body.from_ is None and body.files is None:
        raise BadRequestError(
            "the modelfile field is no longer part of the API; send from or files "
            "(homeport create -f Modelfile does this for you)")
    model = body.model or body.name
    if not model:
        raise BadRequestError("model is required")
    if body.parameters:
        apply_options(ModelOptions(), body.parameters)  # wrong types are a 400 now, not at chat
    license_ = [body.license] if isinstance(body.license, str) else body.license
    messages = None
    if body.messages is not None:
        messages = [{"role": message.role, "content": message.content or ""}
                    for message in body.messages]
    return CreateSpec(
        model=model, from_=body.from_, files=body.files, draft_files=body.draft_files,
        adapters=body.adapters, template=body.template, system=body.system, license=license_,
        parameters=body.parameters, messages=messages,
        quantize=body.quantize or body.quantization or body.draft_quantize,
    )


async def create(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, schemas.CreateRequest, state.max_body_bytes)
    spec = _create_spec(body)
    check_model(request, spec.model)
    if spec.from_ and is_valid_name(spec.from_):
        check_model(request, spec.from_)  # no new name for a model outside the caller's globs
    if spec.template and is_jinja_template(spec.template):
        # A Jinja TEMPLATE replaces the GGUF's; refuse one that cannot compile or render.
        await asyncio.to_thread(state.engine.templates.render, spec.template,
                                [{"role": "user", "content": "hello"}])
    lines = await asyncio.to_thread(lambda: list(create_model(state.store, spec)))
    if body.stream is False:
        return JSONResponse({"status": "success"})
    return StreamResponse(_progress_lines(lines[0], _replay(lines[1:])), NDJSON)


async def blob(request: Request) -> Response:
    """HEAD: 200 if the store has the blob, else 404. POST: upload it (201; 200 if present)."""
    store = state_of(request).store
    digest = normalize_digest(request.path_params["digest"])
    if request.method == "HEAD":
        return Response(status_code=200 if store.has_blob(digest) else 404)
    length = request.headers.get("content-length", "")
    created = await receive_blob(store, digest, request.stream(),
                                 int(length) if length.isdigit() else None)
    return Response(status_code=201 if created else 200)


# --- copy and delete -----------------------------------------------------------------------------


async def copy(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, schemas.CopyRequest, state.max_body_bytes)
    if not body.source or not body.destination:
        raise BadRequestError("source and destination are required")
    # Copying under another name must not turn a model outside the caller's globs into one inside.
    check_model(request, body.source)
    check_model(request, body.destination)
    state.store.copy(body.source, body.destination)
    return Response(status_code=200)


async def delete(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, schemas.DeleteRequest, state.max_body_bytes)
    name = body.model or body.name
    resolve_model(request, name)
    state.store.delete(name)
    return Response(status_code=200)


routes = [
    Route("/api/pull", pull, methods=["POST"]),
    Route("/api/push", push, methods=["POST"]),
    Route("/api/create", create, methods=["POST"]),
    Route("/api/blobs/{digest:path}", blob, methods=["HEAD", "POST"]),
    Route("/api/copy", copy, methods=["POST"]),
    Route("/api/delete", delete, methods=["DELETE"]),
]
