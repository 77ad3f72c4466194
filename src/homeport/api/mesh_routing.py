"""Routing requests for models that live on other machines, in front of the routes.

One middleware, inside the guard (so only admitted callers are forwarded, under this node's
policy): for a POST to a model route it reads the body (bounded), takes the ``model`` it names and
asks the router. A model this machine has, or that no machine has, goes on to the route as if
nothing happened (the body is replayed); one that lives elsewhere is forwarded and its answer
streamed back. The routes never know where an answer came from.

``X-Homeport-Node: NAME`` pins a request to one machine (``local`` is this one). A header rather
than a ``model@node`` suffix: the body is forwarded byte for byte, and model names keep their one
grammar. ``X-Homeport-Via`` lists the nodes a request passed through; one that already passed
through this node is a loop and is refused (508).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator

import httpx
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from homeport.api.body import parse_json_text
from homeport.api.errors import anthropic_error_body, error_response, is_anthropic_path, is_openai_path
from homeport.api.streaming import StreamResponse
from homeport.errors import HomeportError
from homeport.mesh import openai_upstream
from homeport.mesh.openai_upstream import BadRequest, Requests
from homeport.mesh.proxy import VIA_HEADER, AllFailed, Forwarded, forward
from homeport.mesh.router import Local, Remote, Unavailable, UnknownNode, choose
from homeport.mesh.upstreams import Upstreams, model_key
from homeport.net.caller import caller_of, record_of
from homeport.store import ModelStore
from homeport.store.names import is_valid_name

log = logging.getLogger(__name__)

NODE_HEADER = "x-homeport-node"
ROUTED_PATHS = frozenset({
    "/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show",
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages",
})


def new_node_id() -> str:
    """This process's name in X-Homeport-Via: unique, and telling nothing about the machine."""
    return uuid.uuid4().hex[:16]


def _error_record(path: str, message: str) -> bytes:
    """The API's own error record, for a failure after the answer started."""
    if is_anthropic_path(path):
        body = json.dumps(anthropic_error_body(500, message))
        return f"event: error\ndata: {body}\n\n".encode()
    if is_openai_path(path):
        return f"data: {json.dumps({'error': {'message': message, 'type': 'api_error'}})}\n\n".encode()
    return (json.dumps({"error": message}) + "\n").encode()


class MeshRouting:
    def __init__(self, app: ASGIApp, upstreams: Upstreams, store: ModelStore,
                 max_body_bytes: int, node_id: str) -> None:
        self.app = app
        self.upstreams = upstreams
        self.store = store
        self.max_body_bytes = max_body_bytes
        self.node_id = node_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST"
                or scope["path"] not in ROUTED_PATHS or not self.upstreams):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        via = [node.strip() for node in headers.get(VIA_HEADER, "").split(",") if node.strip()]
        if self.node_id in via:
            await self._error(scope, receive, send, 508,
                              "forwarding loop: this request already passed through this node; "
                              "check the upstreams of the nodes it went through")
            return
        body, complete = await self._read_body(receive)
        replay = self._replaying(body, complete, receive)
        model = self._model_named(body) if complete else None
        if model is None:
            await self.app(scope, replay, send)
            return
        try:
            caller_of(scope).check_model(model)
        except HomeportError as exc:
            await self._error(scope, receive, send, exc.status, exc.message)
            return
        record_of(scope).model = model
        decision = choose(self.upstreams, model_key(model), self._here(model),
                          headers.get(NODE_HEADER))
        if isinstance(decision, Local):
            await self.app(scope, replay, send)
        elif isinstance(decision, UnknownNode):
            await self._error(scope, receive, send, 400,
                              f"unknown node '{decision.node}' in {NODE_HEADER}; "
                              f"known: local, {', '.join(u.name for u in self.upstreams.all)}")
        elif isinstance(decision, Unavailable):
            await self._unavailable(scope, receive, send, model, list(decision.nodes),
                                    decision.retry_after)
        else:
            await self._forward(scope, receive, send, decision, body, via)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, decision: Remote,
                       body: bytes, via: list[str]) -> None:
        headers, path, model = Headers(scope=scope), scope["path"], record_of(scope).model
        key = model_key(model)
        # An OpenAI-compatible server answers any model name with the one it has: only those
        # that list the model are asked.
        candidates = tuple(upstream for upstream in decision.candidates
                           if upstream.kind != "openai" or key in upstream.native)
        if not candidates:
            await self._error(scope, receive, send, 404, f"model '{model}' not found on "
                              f"{', '.join(upstream.name for upstream in decision.candidates)}")
            return
        if path == "/api/show" and candidates[0].kind == "openai":
            await JSONResponse(openai_upstream.show_answer(candidates[0].native[key]))(
                scope, receive, send)
            return
        data = parse_json_text(body.decode("utf-8", errors="replace"))
        requests = Requests(path, body, data if isinstance(data, dict) else {}, key)
        try:
            answer = await forward(self.upstreams.client(), candidates, "POST", requests,
                                   headers, ", ".join([*via, self.node_id]),
                                   caller_of(scope).identity)
        except AllFailed as exc:
            await self._unavailable(scope, receive, send, model, exc.names, 1)
            return
        except BadRequest as exc:
            await self._error(scope, receive, send, 400, str(exc))
            return
        log.debug("%s for %s forwarded to %s", path, model, answer.upstream.name)
        translated = requests.translated.get(answer.upstream.name)
        if translated is None:
            response = StreamResponse(self._relay(answer, answer.chunks(), path),
                                      answer.response.headers.get("content-type",
                                                                  "application/json"),
                                      headers=answer.headers())
        elif answer.response.status_code >= 400:  # the upstream's error, in Ollama's shape
            status = answer.response.status_code
            try:
                text = await answer.response.aread()
            finally:
                await answer.close()
            await self._error(scope, receive, send, status, openai_upstream.error_message(
                status, text[:openai_upstream.MAX_ERROR_BYTES]))
            return
        else:
            body_chunks = openai_upstream.translated_body(path, model, translated, answer.response)
            response = StreamResponse(
                self._relay(answer, body_chunks, path),
                "application/x-ndjson" if translated.stream else "application/json")
        response.status_code = answer.response.status_code
        await response(scope, receive, send)

    @staticmethod
    async def _relay(answer: Forwarded, body: AsyncIterator[bytes],
                     path: str) -> AsyncIterator[bytes]:
        try:
            async for chunk in body:
                yield chunk
        except (httpx.HTTPError, ValueError) as exc:
            if isinstance(exc, httpx.HTTPError):
                answer.upstream.mark_down(f"{type(exc).__name__} during an answer")
            yield _error_record(path, f"upstream {answer.upstream.name} failed during the "
                                      f"answer: {type(exc).__name__}")
        finally:
            await answer.close()  # the client left: the upstream request ends now

    def _here(self, model: str) -> bool:
        try:
            self.store.resolve(model)
        except HomeportError:
            return False
        return True

    def _model_named(self, body: bytes) -> str | None:
        try:
            data = parse_json_text(body.decode("utf-8", errors="replace"))
        except HomeportError:
            return None
        model = data.get("model") or data.get("name") if isinstance(data, dict) else None
        return model if isinstance(model, str) and is_valid_name(model) else None

    async def _read_body(self, receive: Receive) -> tuple[bytes, bool]:
        """The body, or as much as the limit allows (then False: the route answers 413)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), False
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), True
            if size > self.max_body_bytes:
                return b"".join(chunks), False

    @staticmethod
    def _replaying(body: bytes, complete: bool, receive: Receive) -> Receive:
        """A receive that gives the route the body already read, then whatever is left."""
        pending: list[Message] = [{"type": "http.request", "body": body,
                                   "more_body": not complete}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        return replay

    async def _unavailable(self, scope: Scope, receive: Receive, send: Send, model: str,
                           nodes: list[str], retry_after: int) -> None:
        message = (f"model '{model}' is on {', '.join(nodes)}, which cannot be reached now; "
                   "try again later")
        await self._error(scope, receive, send, 503, message, retry_after)

    @staticmethod
    async def _error(scope: Scope, receive: Receive, send: Send, status: int, message: str,
                     retry_after: int | None = None) -> None:
        response: Response = error_response(scope["path"], status, message, retry_after)
        await response(scope, receive, send)

