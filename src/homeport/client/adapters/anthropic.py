"""The ``anthropic`` adapters (Claude Sonnet, ``anthropic_opus``, ``anthropic_haiku``), on the SDK.

All three are one class with a different default model. The API key comes from the config file's
reference or ``ANTHROPIC_API_KEY``; requests go to ``base_url`` (config, ``ANTHROPIC_BASE_URL``, or
Anthropic's API). The Messages stream's events map onto the adapter's: text and thinking deltas,
then ``Finished`` with the input tokens of ``message_start`` and the output tokens of
``message_delta``. An ``error`` event in the stream becomes an AdapterError.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import anthropic
from anthropic.types import MessageParam

from homeport.client.adapters.base import (
    Adapter,
    AdapterError,
    ChatEvent,
    Finished,
    Message,
    TextDelta,
    ThinkingDelta,
    Usage,
)
from homeport.config import config_file

MAX_RETRIES = 2


class AnthropicAdapter(Adapter):
    def __init__(self, name: str, model: str, *, api_key: str, base_url: str,
                 max_tokens: int) -> None:
        if not api_key:
            raise AdapterError(
                f"no Anthropic API key for the {name} adapter: set ANTHROPIC_API_KEY, or "
                f"api_key = \"env:NAME\" (or \"cmd:COMMAND\") under [adapters.{name}] in "
                f"{config_file()}; or use `--adapter ollama`")
        self.name = name
        self.model = model
        self.max_tokens = max_tokens
        self.base_url = base_url
        self.notices = []
        self._client = anthropic.Anthropic(api_key=api_key, base_url=base_url,
                                           max_retries=MAX_RETRIES)

    @property
    def where(self) -> str:
        return self.base_url

    def close(self) -> None:
        self._client.close()

    def models(self) -> list[str]:
        try:
            return [model.id for model in self._client.models.list()]
        except anthropic.AnthropicError as exc:
            raise self._error(exc) from None

    def use_model(self, model: str) -> None:
        # Anthropic checks the name on the first request; a 404 then says what to do.
        self.model = model

    def stream(self, messages: Sequence[Message], system: str | None = None,
               max_tokens: int | None = None) -> Iterator[ChatEvent]:
        params = [_param(message) for message in messages if message.role != "system"]
        input_tokens = output_tokens = 0
        stop_reason = ""
        try:
            with self._client.messages.create(
                model=self.model, max_tokens=min(max_tokens or self.max_tokens, self.max_tokens),
                messages=params, stream=True,
                system=system if system else anthropic.omit,
            ) as events:
                for event in events:
                    if event.type == "message_start":
                        input_tokens = event.message.usage.input_tokens
                    elif event.type == "content_block_delta":
                        if event.delta.type == "text_delta":
                            yield TextDelta(event.delta.text)
                        elif event.delta.type == "thinking_delta":
                            yield ThinkingDelta(event.delta.thinking)
                    elif event.type == "message_delta":
                        output_tokens = event.usage.output_tokens
                        stop_reason = event.delta.stop_reason or ""
                    elif event.type == "message_stop":
                        yield Finished(Usage(input_tokens, output_tokens), stop_reason)
        except anthropic.AnthropicError as exc:
            raise self._error(exc) from None

    def _error(self, exc: anthropic.AnthropicError) -> AdapterError:
        if isinstance(exc, anthropic.APIConnectionError):
            return AdapterError(f"could not reach Anthropic at {self.base_url}: "
                                f"{exc.__cause__ or exc}")
        if not isinstance(exc, anthropic.APIStatusError):
            return AdapterError(f"Anthropic: {exc}")
        kind, message = _error_body(exc.body)
        status = exc.status_code
        detail = f"{message} ({kind})" if kind else message
        if status == 401:
            return AdapterError(f"Anthropic rejected the API key of the {self.name} adapter "
                                f"(401: {detail}); check ANTHROPIC_API_KEY or its api_key "
                                f"reference in {config_file()}")
        if status == 403:
            return AdapterError(f"Anthropic refused the request (403: {detail})")
        if status == 404:
            return AdapterError(f"Anthropic has no model '{self.model}' (404: {detail}); set "
                                f"model under [adapters.{self.name}] in {config_file()}")
        if status == 200:  # an error event after the stream had started
            return AdapterError(f"Anthropic stopped the answer: {detail}; try again")
        return AdapterError(f"Anthropic answered {status}: {detail}")


def _param(message: Message) -> MessageParam:
    if message.role == "assistant":
        return {"role": "assistant", "content": message.content}
    return {"role": "user", "content": message.content}


def _error_body(body: Any) -> tuple[str, str]:
    """(type, message) of Anthropic's ``{"type": "error", "error": {"type", "message"}}``."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("type", "")), str(error.get("message", ""))
    return "", str(body or "no details")
