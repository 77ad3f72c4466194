"""A fake Anthropic Messages API: a real HTTP server sending the real SSE event sequence.

POST /v1/messages streams message_start, content_block_start, ping, content_block_delta...,
content_block_stop, message_delta (usage.output_tokens), message_stop. A user message containing
``[think]`` gets a thinking block first; ``[overload]`` gets an ``error`` event mid-stream. A wrong
key (``x-api-key`` or bearer) gets 401, the model ``claude-missing`` 404, in Anthropic's error shape.
GET /v1/models lists three models. Every request is recorded in ``requests``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tests.support.http import BackgroundServer, JSONHandler

API_KEY = "sk-ant-test-0123456789"
MISSING_MODEL = "claude-missing"
MODELS = ["claude-sonnet-5-5", "claude-opus-5-5", "claude-haiku-5-5"]


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


class _Handler(JSONHandler):
    @property
    def fake(self) -> FakeAnthropic:
        return self.server.fake  # type: ignore[attr-defined,no-any-return]

    def _authorised(self) -> bool:
        # The API takes the key as x-api-key (CodeCompanion, older SDKs) or a bearer token (the
        # current SDK), and wants an anthropic-version header.
        bearer = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        key = self.headers.get("x-api-key") or bearer
        if not self.headers.get("anthropic-version"):
            self.send_json(400, _error("invalid_request_error", "anthropic-version is required"))
            return False
        if key != self.fake.api_key:
            self.send_json(401, _error("authentication_error", "invalid x-api-key"))
            return False
        return True

    def do_GET(self) -> None:
        self.fake.record(self.path, self.headers, {})
        if not self._authorised():
            return
        if self.path.startswith("/v1/models"):
            data = [{"type": "model", "id": name, "display_name": name,
                     "created_at": "2026-01-01T00:00:00Z"} for name in MODELS]
            self.send_json(200, {"data": data, "has_more": False, "first_id": MODELS[0],
                                 "last_id": MODELS[-1]})
            return
        self.send_json(404, _error("not_found_error", "no such route"))

    def do_POST(self) -> None:
        body = self.read_body()
        self.fake.record(self.path, self.headers, body)
        if not self._authorised():
            return
        if self.path != "/v1/messages":
            self.send_json(404, _error("not_found_error", "no such route"))
            return
        if body.get("model") == MISSING_MODEL:
            self.send_json(404, _error("not_found_error", f"model: {MISSING_MODEL}"))
            return
        last = body["messages"][-1]["content"]
        text = last if isinstance(last, str) else json.dumps(last)
        self._stream(body, text)

    def _stream(self, body: dict[str, Any], prompt: str) -> None:
        self.start_stream("text/event-stream")
        message = {"id": "msg_fake01", "type": "message", "role": "assistant", "content": [],
                   "model": body["model"], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": self.fake.input_tokens, "output_tokens": 1}}
        events = [_event("message_start", {"type": "message_start", "message": message})]
        index = 0
        if "[think]" in prompt:
            events += [
                _event("content_block_start", {"type": "content_block_start", "index": 0,
                       "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
                _event("content_block_delta", {"type": "content_block_delta", "index": 0,
                       "delta": {"type": "thinking_delta", "thinking": "Let me think."}}),
                _event("content_block_delta", {"type": "content_block_delta", "index": 0,
                       "delta": {"type": "signature_delta", "signature": "c2lnbmF0dXJl"}}),
                _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ]
            index = 1
        events.append(_event("content_block_start", {"type": "content_block_start",
                      "index": index, "content_block": {"type": "text", "text": ""}}))
        events.append(_event("ping", {"type": "ping"}))
        pieces = re.findall(r"\S+\s*", self.fake.reply)
        for number, piece in enumerate(pieces):
            events.append(_event("content_block_delta", {"type": "content_block_delta",
                          "index": index, "delta": {"type": "text_delta", "text": piece}}))
            if "[overload]" in prompt and number == 1:
                events.append(_event("error", _error("overloaded_error", "Overloaded")))
                break
        else:
            events += [
                _event("content_block_stop", {"type": "content_block_stop", "index": index}),
                _event("message_delta", {"type": "message_delta",
                       "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                       "usage": {"output_tokens": len(pieces)}}),
                _event("message_stop", {"type": "message_stop"}),
            ]
        for event in events:
            if not self.send_chunk(event):
                return


class FakeAnthropic(BackgroundServer):
    def __init__(self, reply: str = "Hello from the fake Claude, streamed in pieces.") -> None:
        super().__init__(_Handler)
        self.reply = reply
        self.api_key = API_KEY
        self.input_tokens = 21
