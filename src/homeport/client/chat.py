"""The chat strategy without its terminal: a conversation, its adapter, attachments, history.

    turn = session.ask("question")        # a PendingTurn
    for event in turn.events(): ...       # stream it; Ctrl-C -> turn.stop()
    turn.commit()                         # into the conversation, and into history at once

A stopped answer is kept with what arrived (marked stopped); a failed one is dropped, so the
conversation never holds a question without an answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath

from homeport.client.adapters import Adapter, ChatEvent, Finished, Message, TextDelta, Usage
from homeport.client.history import Conversation, History, Turn
from homeport.errors import HomeportError

MAX_ATTACHMENT_BYTES = 256 * 1024


@dataclass(frozen=True)
class Attachment:
    name: str
    text: str


def fenced(text: str, info: str = "") -> str:
    """A Markdown code block that survives backticks inside ``text``."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text.rstrip(chr(10))}\n{fence}"


def language(name: str) -> str:
    """A code block's info string for a file: its extension ("py" for main.py), or ""."""
    return PurePath(name).suffix.lstrip(".")


def read_attachment(path: Path) -> Attachment:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise HomeportError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_ATTACHMENT_BYTES:
        raise HomeportError(f"{path} is larger than {MAX_ATTACHMENT_BYTES // 1024} KiB; attach "
                            "a smaller file or a part of it")
    if b"\0" in data:
        raise HomeportError(f"{path} looks like a binary file; only text can be attached")
    return Attachment(str(path), data.decode("utf-8", errors="replace"))


class PendingTurn:
    """One question being answered."""

    def __init__(self, session: ChatSession, user: str) -> None:
        self.session = session
        self.user = user
        self.text: list[str] = []
        self.usage = Usage()
        self.finished = False
        self.stopped = False
        self._events: Iterator[ChatEvent] | None = None

    def events(self) -> Iterator[ChatEvent]:
        adapter = self.session.adapter
        self._events = adapter.stream(self.session.messages(self.user), self.session.system)
        for event in self._events:
            if isinstance(event, TextDelta):
                self.text.append(event.text)
            elif isinstance(event, Finished):
                self.usage = event.usage
                self.finished = True
            yield event

    @property
    def answer(self) -> str:
        return "".join(self.text)

    def stop(self) -> None:
        """Stop the answer: closing the stream closes the connection, so generation ends."""
        self.stopped = True
        if self._events is not None and hasattr(self._events, "close"):
            self._events.close()

    def commit(self) -> Turn | None:
        """Keep the turn (in the conversation and in history); None if there is nothing to keep."""
        if not (self.finished or (self.stopped and self.answer.strip())):
            return None
        adapter = self.session.adapter
        turn = Turn(self.user, self.answer, adapter.name, adapter.model, self.usage,
                    stopped=not self.finished)
        self.session.remember(turn)
        return turn


class ChatSession:
    def __init__(self, adapter: Adapter, history: History | None = None,
                 conversation: Conversation | None = None, system: str | None = None) -> None:
        self.adapter = adapter
        self.history = history
        self.conversation_id = conversation.id if conversation else None
        self.turns: list[Turn] = list(conversation.turns) if conversation else []
        self.system = system if system is not None else (
            conversation.system if conversation else None)
        self.attachments: list[Attachment] = []

    def messages(self, question: str) -> list[Message]:
        messages: list[Message] = []
        for turn in self.turns:
            messages += [Message("user", turn.user), Message("assistant", turn.answer)]
        return [*messages, Message("user", question)]

    def attach(self, path: Path) -> Attachment:
        attachment = read_attachment(path)
        self.attachments.append(attachment)
        return attachment

    def ask(self, text: str) -> PendingTurn:
        """Start a turn; attached files go with this question, then are cleared."""
        parts = [text.strip()] if text.strip() else []
        for attachment in self.attachments:
            parts.append(f"File `{attachment.name}`:\n"
                         f"{fenced(attachment.text, language(attachment.name))}")
        self.attachments = []
        return PendingTurn(self, "\n\n".join(parts))

    def remember(self, turn: Turn) -> None:
        self.turns.append(turn)
        if self.history is not None:
            self.conversation_id = self.history.add_turn(self.conversation_id, turn, self.system)

    def clear(self) -> None:
        """Start a new conversation (the old one stays in history)."""
        self.turns = []
        self.conversation_id = None
        self.attachments = []

    def transcript(self) -> str:
        return transcript_markdown(self.turns, self.system)


def transcript_markdown(turns: list[Turn], system: str | None, title: str = "") -> str:
    lines = [f"# {title}", ""] if title else []
    if system:
        lines += ["**System:**", "", system, ""]
    for turn in turns:
        lines += ["## You", "", turn.user, "", f"## {turn.adapter} ({turn.model})", "",
                  turn.answer + (" _(stopped)_" if turn.stopped else ""), ""]
    return "\n".join(lines).rstrip() + "\n"
