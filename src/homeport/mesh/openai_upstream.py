"""Ollama's native API onto an OpenAI-compatible upstream (vLLM, llama-server, LM Studio, SGLang).

``/api/chat`` and ``/api/generate`` become ``/v1/chat/completions`` (a raw generate becomes
``/v1/completions``), ``/api/embed`` and ``/api/embeddings`` become ``/v1/embeddings``; the
answers come back in Ollama's shapes, a stream as NDJSON lines as the SSE events arrive. The
mapping functions are pure; ``translated_answer`` is the one that reads the upstream's answer.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from homeport.mesh.upstreams import Upstream

NATIVE_PATHS = frozenset({"/api/chat", "/api/generate", "/api/embed", "/api/embeddings"})
PASSTHROUGH_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                               "/v1/responses", "/v1/messages"})
# Ollama's option → the OpenAI field (or the extra field vLLM and llama-server accept).
OPTION_FIELDS = {"num_predict": "max_tokens", "stop": "stop", "seed": "seed",
                 "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                 "min_p": "min_p", "repeat_penalty": "repetition_penalty",
                 "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}
DONE_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop", "function_call": "stop",
                "content_filter": "stop"}
MAX_ERROR_BYTES = 64 * 1024  # an upstream's error body is read up to this much


class BadRequest(ValueError):
    """The caller's body cannot be translated (a 400)."""


@dataclass(frozen=True)
class Translated:
    """One native request as the upstream is to be asked it."""

    path: str
    body: dict[str, Any]
    stream: bool


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be an object")
    return value


def sampling_fields(options: dict[str, Any]) -> dict[str, Any]:
    """Ollama's ``options`` as OpenAI request fields; the ones with no counterpart are left out.
    A negative num_predict (no limit) sends no max_tokens."""
    fields: dict[str, Any] = {}
    for option, name in OPTION_FIELDS.items():
        value = options.get(option)
        if value is None or (option == "num_predict" and isinstance(value, int) and value < 0):
            continue
        fields[name] = value
    return fields


def response_format(fmt: Any) -> dict[str, Any] | None:
    """Ollama's ``format``: "json" is any JSON object, an object is a JSON schema."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}
    raise BadRequest('format must be "json" or a JSON schema object')


def _image_parts(images: Any) -> list[dict[str, Any]]:
    if not images:
        return []
    if not isinstance(images, list) or not all(isinstance(image, str) for image in images):
        raise BadRequest("images must be a list of base64 strings")
    return [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}
            for image in images]


def chat_messages(messages: Any) -> list[dict[str, Any]]:
    """Ollama's messages in OpenAI's shape: tool calls with string arguments and ids, tool
    answers naming the call they answer (in order), images as content parts."""
    if not isinstance(messages, list):
        raise BadRequest("messages must be a list")
    converted: list[dict[str, Any]] = []
    unanswered: list[str] = []  # ids of the last assistant's calls, for the tool messages after
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{index}] must be an object with a role")
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise BadRequest(f"messages[{index}].content must be a string")
        images = _image_parts(message.get("images"))
        out: dict[str, Any] = {"role": message["role"],
                               "content": [{"type": "text", "text": content}, *images]
                               if images else content}
        calls = message.get("tool_calls")
        if calls:
            if not isinstance(calls, list):
                raise BadRequest(f"messages[{index}].tool_calls must be a list")
            out["tool_calls"] = []
            unanswered = []
            for number, call in enumerate(calls):
                function = _object(call, "a tool call").get("function")
                function = _object(function, "a tool call's function")
                call_id = f"call_{index}_{number}"
                unanswered.append(call_id)
                arguments = function.get("arguments") or {}
                out["tool_calls"].append({
                    "id": call_id, "type": "function",
                    "function": {"name": str(function.get("name", "")),
                                 "arguments": arguments if isinstance(arguments, str)
                                 else json.dumps(arguments)}})
        if message["role"] == "tool":
            out["tool_call_id"] = unanswered.pop(0) if unanswered else f"call_{index}"
            if message.get("tool_name"):
                out["name"] = message["tool_name"]
        converted.append(out)
    return converted


def _common_fields(body: dict[str, Any], model_id: str) -> dict[str, Any]:
    fields: dict[str, Any] = {"model": model_id,
                              **sampling_fields(_object(body.get("options"), "options"))}
    fmt = response_format(body.get("format"))
    if fmt is not None:
        fields["response_format"] = fmt
    if isinstance(body.get("think"), bool):  # vLLM's and llama-server's template switch
        fields["chat_template_kwargs"] = {"enable_thinking": body["think"]}
    return fields


def _streaming(body: dict[str, Any], fields: dict[str, Any]) -> bool:
    stream = body.get("stream", True) is not False  # Ollama streams unless told not to
    fields["stream"] = stream
    if stream:
        fields["stream_options"] = {"include_usage": True}
    return stream


def translate_request(path: str, body: dict[str, Any], model_id: str) -> Translated:
    """The upstream request for a native one; ``model_id`` is the upstream's name for the model."""
    if path == "/api/chat":
        fields = {**_common_fields(body, model_id), "messages": chat_messages(body.get("messages"))}
        if body.get("tools"):
            if not isinstance(body["tools"], list):
                raise BadRequest("tools must be a list")
            fields["tools"] = body["tools"]  # Ollama's tools are OpenAI's already
        return Translated("/v1/chat/completions", fields, _streaming(body, fields))
    if path == "/api/generate":
        prompt = body.get("prompt") or ""
        system = body.get("system") or ""
        if not isinstance(prompt, str) or not isinstance(system, str):
            raise BadRequest("prompt and system must be strings")
        fields = _common_fields(body, model_id)
        if body.get("raw"):
            fields["prompt"] = prompt
            return Translated("/v1/completions", fields, _streaming(body, fields))
        user: dict[str, Any] = {"role": "user", "content": prompt}
        images = _image_parts(body.get("images"))
        if images:
            user["content"] = [{"type": "text", "text": prompt}, *images]
        fields["messages"] = [*([{"role": "system", "content": system}] if system else []), user]
        return Translated("/v1/chat/completions", fields, _streaming(body, fields))
    if path in ("/api/embed", "/api/embeddings"):
        text = body.get("input") if path == "/api/embed" else body.get("prompt")
        if isinstance(text, str):
            text = [text]
        if not isinstance(text, list) or not all(isinstance(item, str) for item in text):
            raise BadRequest("input must be a string or a list of strings")
        fields = {"model": model_id, "input": text}
        if isinstance(body.get("dimensions"), int):
            fields["dimensions"] = body["dimensions"]
        return Translated("/v1/embeddings", fields, False)
    raise BadRequest(f"{path} has no OpenAI-compatible counterpart")


def tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI's tool calls (string arguments) as Ollama's (object arguments)."""
    converted = []
    for call in calls:
        function = call.get("function") or {}
        arguments = function.get("arguments") or "{}"
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                arguments = {"arguments": arguments}  # kept rather than lost
        converted.append({"function": {"name": function.get("name", ""), "arguments": arguments}})
    return converted


def _thinking(part: dict[str, Any]) -> str:
    return str(part.get("reasoning_content") or part.get("reasoning") or "")


@dataclass
class Timing:
    """What the final record says of time: the upstream's own figures when it gives them
    (llama-server's ``timings``), otherwise as measured here."""

    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None

    def durations(self, answer: dict[str, Any]) -> dict[str, int]:
        end = time.perf_counter()
        first = self.first_token or end
        prompt_ns, eval_ns = int((first - self.started) * 1e9), int((end - first) * 1e9)
        timings = answer.get("timings")
        if isinstance(timings, dict):
            prompt_ns = int(float(timings.get("prompt_ms") or 0) * 1e6) or prompt_ns
            eval_ns = int(float(timings.get("predicted_ms") or 0) * 1e6) or eval_ns
        return {"total_duration": int((end - self.started) * 1e9), "load_duration": 0,
                "prompt_eval_duration": prompt_ns, "eval_duration": eval_ns}


class AnswerMapper:
    """OpenAI completion chunks (or one whole completion) as Ollama's records for ``path``."""

    def __init__(self, path: str, model: str) -> None:
        self.chat = path == "/api/chat"
        self.model = model
        self.timing = Timing()
        self.calls: dict[int, dict[str, Any]] = {}  # streamed tool calls, gathered by index
        self.finish: str | None = None
        self.usage: dict[str, Any] = {}
        self.pieces = 0  # content chunks: the token count when the upstream gives no usage

    def _record(self, content: str, thinking: str, calls: list[dict[str, Any]] | None,
                done: bool) -> dict[str, Any]:
        record: dict[str, Any] = {"model": self.model, "created_at": _now()}
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = calls
            record["message"] = message
        else:
            record["response"] = content
            if thinking:
                record["thinking"] = thinking
        record["done"] = done
        return record

    def chunk(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        """The records one streamed chunk gives (none for a role-only or usage-only chunk)."""
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]
        records = []
        for choice in data.get("choices") or []:
            delta = choice.get("delta") or {}
            content = str(delta.get("content") or choice.get("text") or "")
            thinking = _thinking(delta)
            for call in delta.get("tool_calls") or []:
                self._gather(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
            if content or thinking:
                self.pieces += 1
                if self.timing.first_token is None:
                    self.timing.first_token = time.perf_counter()
                records.append(self._record(content, thinking, None, False))
        return records

    def _gather(self, call: dict[str, Any]) -> None:
        """A streamed tool call comes in fragments: name first, then arguments in pieces."""
        gathered = self.calls.setdefault(int(call.get("index", len(self.calls))),
                                         {"function": {"name": "", "arguments": ""}})
        function = call.get("function") or {}
        gathered["function"]["name"] += function.get("name") or ""
        gathered["function"]["arguments"] += function.get("arguments") or ""

    def final(self, answer: dict[str, Any] | None = None, content: str = "", thinking: str = "",
              calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The last record: tool calls, counts, durations, the reason it ended (and, for an
        answer that was not streamed, its whole text)."""
        calls = calls or tool_calls([self.calls[index] for index in sorted(self.calls)])
        record = self._record(content, thinking, calls or None, True)
        usage = self.usage or (answer or {}).get("usage") or {}
        record["done_reason"] = DONE_REASONS.get(self.finish or "stop", self.finish or "stop")
        record.update(self.timing.durations(answer or {}))
        record["prompt_eval_count"] = int(usage.get("prompt_tokens") or 0)
        record["eval_count"] = int(usage.get("completion_tokens") or self.pieces)
        return record

    def whole(self, answer: dict[str, Any]) -> dict[str, Any]:
        """A completion that was not streamed as one Ollama record."""
        choice = (answer.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        self.finish = choice.get("finish_reason")
        return self.final(answer, str(message.get("content") or choice.get("text") or ""),
                          _thinking(message), tool_calls(message.get("tool_calls") or []))


def _pooled(vector: Any) -> list[float]:
    """One embedding: a server that pools nothing answers a vector per token, averaged here
    (mean pooling, as most embedding models are pooled)."""
    if vector and isinstance(vector[0], list):
        return [sum(column) / len(vector) for column in zip(*vector, strict=True)]
    return [float(value) for value in vector]


def _normalized(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(value * value for value in vector))
    return [value / norm for value in vector] if norm else vector


def embeddings_answer(path: str, model: str, answer: dict[str, Any],
                      elapsed_ns: int) -> dict[str, Any]:
    """``/v1/embeddings``'s answer as ``/api/embed``'s (normalized, as Ollama's are) or
    ``/api/embeddings``'s (one vector, as the model gave it)."""
    vectors = [_pooled(item.get("embedding") or [])
               for item in sorted(answer.get("data") or [], key=lambda item: item.get("index", 0))]
    if path == "/api/embeddings":
        return {"embedding": vectors[0] if vectors else []}
    usage = answer.get("usage") or {}
    return {"model": model, "embeddings": [_normalized(vector) for vector in vectors],
            "total_duration": elapsed_ns, "load_duration": 0,
            "prompt_eval_count": int(usage.get("prompt_tokens") or 0)}


def show_answer(native: dict[str, Any]) -> dict[str, Any]:
    """``/api/show`` from what ``/v1/models`` told: capabilities cannot be asked, so completion
    only; the context length when the server gives it (llama-server's meta, vLLM's max_model_len)."""
    meta = native.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    context = native.get("max_model_len") or meta.get("n_ctx_train") or meta.get("n_ctx")
    info: dict[str, Any] = {"general.architecture": "", "general.name": str(native.get("id", ""))}
    if isinstance(context, int):
        info["context_length"] = context
    return {"modelfile": "", "parameters": "", "template": "", "license": "",
            "details": {"parent_model": "", "format": "", "family": "", "families": None,
                        "parameter_size": "", "quantization_level": ""},
            "model_info": info, "capabilities": ["completion"],
            "modified_at": "1970-01-01T00:00:00Z"}


def error_message(status: int, body: bytes) -> str:
    """An upstream's error in words, whatever its shape (OpenAI's, FastAPI's, plain text)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data.get("message")))
        if isinstance(error, dict):
            error = error.get("message")
        if error:
            return str(error)
    text = body.decode("utf-8", errors="replace").strip()
    return text[:2000] or f"the upstream answered {status}"


async def _sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON of each ``data:`` line as it arrives, up to ``[DONE]``."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            continue
        if isinstance(event, dict):
            if "error" in event:
                raise UpstreamFailed(error_message(500, data.encode()))
            yield event


class UpstreamFailed(Exception):
    """The upstream reported an error inside its stream."""


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record) + "\n").encode()


async def translated_body(path: str, model: str, request: Translated,
                          response: httpx.Response) -> AsyncIterator[bytes]:
    """The upstream's successful answer as Ollama's: NDJSON lines as the events arrive, or one
    JSON body. An error after the stream started is Ollama's error record."""
    mapper = AnswerMapper(path, model)
    started = time.perf_counter()
    if not request.stream:
        answer = json.loads(await response.aread())
        if path in ("/api/embed", "/api/embeddings"):
            elapsed = int((time.perf_counter() - started) * 1e9)
            yield json.dumps(embeddings_answer(path, model, answer, elapsed)).encode()
        else:
            yield json.dumps(mapper.whole(answer)).encode()
        return
    try:
        async for event in _sse_events(response):
            for record in mapper.chunk(event):
                yield _line(record)
    except UpstreamFailed as exc:
        yield _line({"error": str(exc)})
        return
    yield _line(mapper.final())



class Requests:
    """What each candidate upstream is sent for one request: the body as it came to a homeport or
    Ollama upstream, the translation (or, on the OpenAI routes, the upstream's own model id) to
    an OpenAI-compatible one. Remembers each translation for reading the answer."""

    def __init__(self, path: str, body: bytes, data: dict[str, Any], key: str) -> None:
        self.path, self.body, self.data, self.key = path, body, data, key
        self.translated: dict[str, Translated] = {}

    def __call__(self, upstream: Upstream) -> tuple[str, bytes]:
        if upstream.kind != "openai":
            return self.path, self.body
        model_id = str(upstream.native.get(self.key, {}).get("id", self.key))
        if self.path in NATIVE_PATHS:
            translated = translate_request(self.path, self.data, model_id)
            self.translated[upstream.name] = translated
            return translated.path, json.dumps(translated.body).encode()
        return self.path, json.dumps({**self.data, "model": model_id}).encode()
