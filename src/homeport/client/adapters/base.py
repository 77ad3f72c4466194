"""What every adapter offers: stream a chat as events, ending with the usage.

    adapter.stream(messages, system) -> TextDelta... ThinkingDelta... Finished(usage)

An adapter talks to one provider (an Ollama-API server, Anthropic's Messages API) with one model.
Failures are ``AdapterError`` (or the client's ``ServerUnreachableError``): one line that says what
happened and what to do next. Closing the stream early (Ctrl-C) closes the connection, so the
server stops generating.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from homeport.errors import HomeportError

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ThinkingDelta:
    text: str


@dataclass(frozen=True)
class Finished:
    usage: Usage
    stop_reason: str = ""


ChatEvent = TextDelta | ThinkingDelta | Finished


class AdapterError(HomeportError):
    """A provider refused or failed; the message names it and says what to do."""


@dataclass(frozen=True)
class Reply:
    text: str
    thinking: str
    usage: Usage


class Adapter(ABC):
    """One provider and one model."""

    name: str
    model: str
    #: Things the user should know, e.g. that the default model was replaced by another.
    notices: list[str]

    @abstractmethod
    def stream(self, messages: Sequence[Message], system: str | None = None,
               max_tokens: int | None = None) -> Iterator[ChatEvent]:
        """Yield the answer as it arrives; the last event is ``Finished``.

        ``max_tokens`` caps this answer below the adapter's own limit, if it has one.
        """

    @abstractmethod
    def models(self) -> list[str]:
        """The models this provider offers (for ``/model``)."""

    @abstractmethod
    def use_model(self, model: str) -> None:
        """Switch to ``model``; an AdapterError when the provider does not have it."""

    @property
    @abstractmethod
    def where(self) -> str:
        """Where requests go, for people: a URL and, for a server, where that came from."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    def complete(self, messages: Sequence[Message], system: str | None = None,
                 max_tokens: int | None = None) -> Reply:
        """The whole answer at once."""
        text: list[str] = []
        thinking: list[str] = []
        usage = Usage()
        for event in self.stream(messages, system, max_tokens):
            if isinstance(event, TextDelta):
                text.append(event.text)
            elif isinstance(event, ThinkingDelta):
                thinking.append(event.text)
            else:
                usage = event.usage
        return Reply("".join(text), "".join(thinking), usage)
