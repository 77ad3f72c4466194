"""Adapters: one interface (stream a chat, return usage) over each provider.

``anthropic`` (Claude Sonnet), ``anthropic_opus`` and ``anthropic_haiku`` talk to Anthropic's
Messages API; ``ollama`` talks to any Ollama-API server, homeport included.
"""

from __future__ import annotations

from homeport.client.adapters.base import (
    Adapter,
    AdapterError,
    ChatEvent,
    Finished,
    Message,
    Reply,
    TextDelta,
    ThinkingDelta,
    Usage,
)
from homeport.client.settings import (
    ADAPTERS,
    ANTHROPIC_ADAPTERS,
    DEFAULT_MAX_TOKENS,
    ClientSettings,
    StrategyName,
)
from homeport.endpoints import Endpoint, resolve_endpoint

__all__ = [
    "ADAPTERS",
    "Adapter",
    "AdapterError",
    "ChatEvent",
    "Finished",
    "Message",
    "Reply",
    "TextDelta",
    "ThinkingDelta",
    "Usage",
    "open_adapter",
]


def open_adapter(name: str, settings: ClientSettings, *, strategy: StrategyName = "chat",
                 model: str | None = None, preferred_model: str | None = None,
                 endpoint: Endpoint | None = None) -> Adapter:
    """The adapter ``name`` with ``model`` (which must exist), else ``preferred_model`` or the
    configured one for ``strategy`` (an ollama server lacking it offers another, with a notice).
    """
    if name not in ADAPTERS:
        raise AdapterError(f"unknown adapter '{name}' (known: {', '.join(ADAPTERS)})")
    chosen = model or preferred_model or settings.model_for(strategy, name).value
    if name in ANTHROPIC_ADAPTERS:
        from homeport.client.adapters.anthropic import AnthropicAdapter

        return AnthropicAdapter(
            name, chosen, api_key=settings.anthropic_key(name).value,
            base_url=settings.anthropic_url(name).value,
            max_tokens=settings.option(name, "max_tokens", DEFAULT_MAX_TOKENS).value)

    from homeport.client.adapters.ollama import OllamaAdapter

    options = {key: value for key, setting in (("num_ctx", "num_ctx"), ("temperature",
               "temperature"), ("num_predict", "max_tokens"))
               if (value := settings.option(name, setting, None).value) is not None}
    return OllamaAdapter(endpoint or resolve_endpoint(), chosen, explicit=model is not None,
                         options=options,
                         keep_alive=settings.option(name, "keep_alive", None).value)
