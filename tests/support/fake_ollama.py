"""A fake Ollama-API server with Ollama's real wire format, serving scripted replies.

For what the real server cannot do on demand: exact fixture answers (the bundled 135M model writes
poor edits), answers slow enough to interrupt, 401/403, an edit racing a change on disk.
``script(body)`` returns (reply text, seconds between chunks); ``on_chat(body)`` runs when a chat
request arrives. Requests are recorded; a client that goes away mid-stream counts in ``disconnects``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tests.support.http import BackgroundServer, JSONHandler


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def pieces(text: str) -> list[str]:
    """The reply cut in token-sized pieces, whitespace kept."""
    return [piece for piece in re.findall(r"\S*\s*", text) if piece]


class _Handler(JSONHandler):
    @property
    def fake(self) -> FakeOllama:
        return self.server.fake  # type: ignore[attr-defined,no-any-return]

    def _allowed(self) -> bool:
        if self.fake.token and self.headers.get("Authorization") != f"Bearer {self.fake.token}":
            self.send_json(401, {"error": "unauthorized: a valid bearer token is required"})
            return False
        if self.fake.forbidden:
            self.send_json(403, {"error": "forbidden: alice@example.com may not use this model"})
            return False
        return True

    def do_GET(self) -> None:
        self.fake.record(self.path, self.headers, {})
        if self.path == "/":
            self.send_json(200, "Ollama is running")
        elif self.path == "/api/version":
            self.send_json(200, {"version": "0.12.0"})
        elif not self._allowed():
            return
        elif self.path == "/api/tags":
            self.send_json(200, {"models": [self._summary(name) for name in self.fake.models]})
        else:
            self.send_json(404, {"error": "404 page not found"})

    def do_HEAD(self) -> None:  # /api/blobs/:digest: no blob is here
        self.fake.record(self.path, self.headers, {})
        if self._allowed():
            self.send_json(404, {"error": "404 page not found"})

    def _summary(self, name: str) -> dict[str, Any]:
        return {"name": name, "model": name, "modified_at": _now(), "size": 1000,
                "digest": "0" * 64,
                "details": {"parent_model": "", "format": "gguf", "family": "llama",
                            "families": ["llama"], "parameter_size": "7.2B",
                            "quantization_level": "Q4_K_M"}}

    def do_POST(self) -> None:
        body = self.read_body()
        self.fake.record(self.path, self.headers, body)
        if not self._allowed():
            return
        if self.path == "/api/show":
            if body.get("model") not in self.fake.models:
                self.send_json(404, {"error": f"model '{body.get('model')}' not found"})
                return
            self.send_json(200, {"capabilities": ["completion"],
                                 "details": self._summary(body["model"])["details"],
                                 "model_info": {"llama.context_length": 4096}})
        elif self.path == "/api/chat":
            self._chat(body)
        else:
            self.send_json(404, {"error": "404 page not found"})

    def _chat(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model not in self.fake.models:
            self.send_json(404, {"error": f"model '{model}' not found"})
            return
        if self.fake.on_chat is not None:
            self.fake.on_chat(body)
        text, delay = self.fake.script(body)
        final = {"model": model, "created_at": _now(), "done": True, "done_reason": "stop",
                 "total_duration": 1_000_000, "load_duration": 1000, "prompt_eval_count": 12,
                 "prompt_eval_duration": 1000, "eval_count": len(pieces(text)),
                 "eval_duration": 1000}
        if body.get("stream") is False:
            final["message"] = {"role": "assistant", "content": text}
            self.send_json(200, final)
            return
        self.start_stream("application/x-ndjson")
        for piece in pieces(text):
            chunk = {"model": model, "created_at": _now(),
                     "message": {"role": "assistant", "content": piece}, "done": False}
            if not self.send_chunk(_line(chunk)):
                self.fake.disconnects += 1
                return
            time.sleep(delay)
        final["message"] = {"role": "assistant", "content": ""}
        self.send_chunk(_line(final))
        self.fake.completed += 1


def _line(item: dict[str, Any]) -> bytes:
    return (json.dumps(item) + "\n").encode()


class FakeOllama(BackgroundServer):
    def __init__(self, models: tuple[str, ...] = ("fake-coder:latest",),
                 reply: str = "A scripted answer.") -> None:
        super().__init__(_Handler)
        self.models = list(models)
        self.reply = reply
        self.delay = 0.0
        self.token: str | None = None
        self.forbidden = False
        self.on_chat: Callable[[dict[str, Any]], None] | None = None
        self.disconnects = 0
        self.completed = 0

    def script(self, body: dict[str, Any]) -> tuple[str, float]:
        return self.reply, self.delay

    def chat_bodies(self) -> list[dict[str, Any]]:
        return [request["body"] for request in self.requests if request["path"] == "/api/chat"]
