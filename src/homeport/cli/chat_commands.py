"""The interactive chat: prompt_toolkit for the input line, rich for answers, slash commands."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory
from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape

from homeport import config
from homeport.cli.interrupts import Interrupts
from homeport.cli.render import AnswerView
from homeport.cli.strategy import notify, open_for
from homeport.client.adapters import ADAPTERS
from homeport.client.chat import ChatSession
from homeport.client.settings import ClientSettings
from homeport.errors import HomeportError

HELP = """\
| command | what it does |
|---|---|
| `/adapter [NAME]` | list the adapters, or switch to NAME (the conversation goes on) |
| `/model [NAME]` | list the models the adapter offers, or switch to NAME |
| `/file PATH` | attach a text file to your next message |
| `/system [TEXT]` | show the system prompt, or set it (`/system -` removes it) |
| `/clear` | start a new conversation (the old one stays in the history) |
| `/save [PATH]` | write the conversation to a Markdown file |
| `/help` | this table |
| `/bye` | quit (or Ctrl-D) |

Ctrl-C stops an answer; what arrived is kept.
"""


class Repl:
    def __init__(self, session: ChatSession, settings: ClientSettings, endpoint: str | None
                 ) -> None:
        self.session = session
        self.settings = settings
        self.endpoint = endpoint
        self.console = Console(highlight=False)
        self.commands: dict[str, Callable[[str], None]] = {
            "/adapter": self.adapter, "/model": self.model, "/file": self.file,
            "/system": self.system, "/clear": self.clear, "/save": self.save, "/help": self.help,
        }

    def run(self) -> None:
        config.data_dir().mkdir(parents=True, exist_ok=True)
        prompt: PromptSession[str] = PromptSession(
            history=FileHistory(str(config.data_dir() / "chat-input-history")))
        self._banner()
        while True:
            try:
                line = prompt.prompt(">>> ")
            except KeyboardInterrupt:
                notify("Use Ctrl-D or /bye to quit.")
                continue
            except EOFError:
                return
            text = line.strip()
            if text in ("/bye", "/exit", "/quit"):
                return
            if not text:
                continue
            try:
                if text.startswith("/"):
                    self.command(text)
                else:
                    self.answer(text)
            except HomeportError as exc:
                self.console.print(f"[bold red]Error:[/] {escape(exc.message)}", soft_wrap=True)

    def _banner(self) -> None:
        adapter = self.session.adapter
        where = f" at {adapter.where}" if adapter.name == "ollama" else ""
        turns = len(self.session.turns)
        resumed = (f", continuing conversation {self.session.conversation_id} ({turns} turns)"
                   if turns else "")
        intro = escape(f"({adapter.model}){where}{resumed}.")
        self.console.print(f"[bold]{adapter.name}[/] {intro} [dim]/help for commands, Ctrl-D to "
                           "quit.[/]", soft_wrap=True)

    def answer(self, text: str) -> None:
        turn = self.session.ask(text)
        started = time.monotonic()
        try:
            with Interrupts() as interrupts, AnswerView(self.console, markdown=True) as view:
                for event in turn.events():
                    interrupts.check()  # a Ctrl-C that a finaliser swallowed
                    view.feed(event)
        except KeyboardInterrupt:
            turn.stop()
        kept = turn.commit()
        if turn.stopped:
            notify("(stopped)" if kept else "(stopped before anything arrived; not kept)")
        else:
            usage = turn.usage
            notify(f"{usage.input_tokens} tokens in, {usage.output_tokens} out, "
                   f"{time.monotonic() - started:.1f} s")

    def command(self, text: str) -> None:
        name, _, argument = text.partition(" ")
        handler = self.commands.get(name.lower())
        if handler is None:
            raise HomeportError(f"unknown command {name}; /help lists them")
        handler(argument.strip())

    # --- the commands ------------------------------------------------------------------------

    def adapter(self, name: str) -> None:
        current = self.session.adapter
        if not name:
            for known in ADAPTERS:
                mark = "*" if known == current.name else " "
                self.console.print(f"{mark} {known}", markup=False)
            return
        replacement = open_for("chat", self.settings, name, None, self.endpoint)
        current.close()
        self.session.adapter = replacement
        self.console.print(f"now chatting with [bold]{name}[/] ({escape(replacement.model)})")

    def model(self, name: str) -> None:
        adapter = self.session.adapter
        if not name:
            for model in adapter.models():
                mark = "*" if model == adapter.model else " "
                self.console.print(f"{mark} {model}", markup=False)
            return
        adapter.use_model(name)
        self.console.print(f"now using [bold]{escape(adapter.model)}[/]")

    def file(self, argument: str) -> None:
        if not argument:
            raise HomeportError("/file needs a path, e.g. /file src/main.py")
        try:
            path = Path(shlex.split(argument)[0]).expanduser()
        except ValueError as exc:  # an unbalanced quote
            raise HomeportError(f"/file: {exc}") from None
        attachment = self.session.attach(path)
        lines = attachment.text.count("\n") + 1
        self.console.print(f"attached {attachment.name} ({lines} lines) to your next message",
                           markup=False)

    def system(self, text: str) -> None:
        if not text:
            shown = self.session.system or "(none)"
            self.console.print(f"system prompt: {shown}", markup=False)
            return
        self.session.system = None if text == "-" else text
        self.console.print("system prompt removed" if text == "-" else "system prompt set")

    def clear(self, _: str) -> None:
        self.session.clear()
        self.console.print("new conversation")

    def save(self, argument: str) -> None:
        if not self.session.turns:
            raise HomeportError("nothing to save yet")
        number = self.session.conversation_id
        stamp = str(number) if number is not None else f"{datetime.now():%Y%m%d-%H%M%S}"
        path = Path(argument or f"chat-{stamp}.md").expanduser()
        try:
            path.write_text(self.session.transcript())
        except OSError as exc:
            raise HomeportError(f"cannot write {path}: {exc.strerror or exc}") from None
        self.console.print(f"saved to {path}", markup=False)

    def help(self, _: str) -> None:
        self.console.print(Markdown(HELP))
