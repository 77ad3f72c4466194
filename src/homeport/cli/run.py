"""``homeport run``: one answer, or a chat at the terminal, as ``ollama run`` gives them.

The flags and the chat's commands are Ollama's: ``--verbose`` (timings after each answer),
``--keepalive``, ``--format json``, ``--think``, ``--hidethinking``; ``/set parameter NAME VALUE``,
``/set system``, ``/set verbose``, ``/set format json``, ``/set think``, ``/show info``, ``/clear``,
``/bye``, and ``\"\"\"`` around a message of several lines.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

import click

from homeport.cli import err_console
from homeport.cli.models import console, print_model_info
from homeport.cli.options import client_for, endpoint_option, insecure_option
from homeport.cli.transfer import pull_with_progress
from homeport.client.api import HomeportClient, ServerError

MULTILINE = '"""'
HELP = """Available commands:
  /set parameter NAME VALUE   set a model option (num_ctx, temperature, num_predict, stop, ...)
  /set system TEXT            set the system message
  /set verbose | quiet        show timings after each answer, or not
  /set format json | noformat answer in JSON, or freely
  /set think | nothink        let a thinking model think, or not
  /set hidethinking | nohidethinking
  /show info | parameters | system | template | license
  /clear                      forget the conversation
  /bye                        quit (or Ctrl-D)
  /? or /help                 this help
Use \"\"\" to begin and end a message of several lines."""


@dataclass
class RunSettings:
    """What each turn sends along, set by the flags and changed by ``/set``."""

    options: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    format: str | None = None
    think: bool | str | None = None
    keep_alive: str | None = None
    verbose: bool = False
    hide_thinking: bool = False

    def request(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The fields of a chat request for ``messages`` (the system message goes first)."""
        if self.system is not None:
            messages = [{"role": "system", "content": self.system}, *messages]
        fields: dict[str, Any] = {"messages": messages}
        for name, value in (("options", self.options), ("format", self.format),
                            ("think", self.think), ("keep_alive", self.keep_alive)):
            if value not in (None, {}):
                fields[name] = value
        return fields


def parameter_value(name: str, raw: str) -> Any:
    """A ``/set parameter`` value as JSON would have it (numbers, true/false), else the text."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if isinstance(value, int | float | bool) and name != "stop" else raw


def _think_value(raw: str) -> bool | str:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("low", "medium", "high"):
        return lowered
    raise click.BadParameter("expected true, false, low, medium or high")


def _stats(final: dict[str, Any]) -> str:
    """Ollama's ``--verbose`` lines, from the final chunk's nanosecond timings."""
    def seconds(key: str) -> float:
        return float(final.get(key, 0)) / 1e9

    def rate(count_key: str, duration_key: str) -> str:
        duration = seconds(duration_key)
        return f"{final.get(count_key, 0) / duration:.2f} tokens/s" if duration else "-"

    rows = [
        ("total duration", f"{seconds('total_duration'):.3f}s"),
        ("load duration", f"{seconds('load_duration') * 1000:.1f}ms"),
        ("prompt eval count", f"{final.get('prompt_eval_count', 0)} token(s)"),
        ("prompt eval duration", f"{seconds('prompt_eval_duration') * 1000:.1f}ms"),
        ("prompt eval rate", rate("prompt_eval_count", "prompt_eval_duration")),
        ("eval count", f"{final.get('eval_count', 0)} token(s)"),
        ("eval duration", f"{seconds('eval_duration'):.3f}s"),
        ("eval rate", rate("eval_count", "eval_duration")),
    ]
    return "\n".join(f"{label + ':':<22}{value}" for label, value in rows)


def answer(client: HomeportClient, model: str, messages: list[dict[str, Any]],
           settings: RunSettings) -> str:
    """Print the answer as it streams (thinking dimmed, unless hidden); return its text."""
    parts: list[str] = []
    thinking = False
    final: dict[str, Any] = {}
    dim, plain = ("\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "")
    for chunk in client.chat(model, **settings.request(messages)):
        message = chunk.get("message", {})
        thought = message.get("thinking", "")
        if thought and not settings.hide_thinking:
            if not thinking:
                sys.stdout.write(f"{dim}Thinking...\n")
                thinking = True
            sys.stdout.write(thought)
        text = message.get("content", "")
        if text:
            if thinking:
                sys.stdout.write(f"\n...done thinking.{plain}\n\n")
                thinking = False
            parts.append(text)
            sys.stdout.write(text)
        sys.stdout.flush()
        if chunk.get("done"):
            final = chunk
    sys.stdout.write(f"{plain}\n" if thinking else "\n")
    sys.stdout.flush()
    if settings.verbose and final:
        err_console.print(_stats(final), highlight=False)
    return "".join(parts)


def ensure_model(client: HomeportClient, model: str, insecure: bool) -> None:
    """Offer to pull ``model`` when the server does not have it. Only a person at a terminal is
    asked; a script gets the server's "not found" error rather than a surprise download."""
    try:
        client.show(model)
        return
    except ServerError as exc:
        if exc.status != 404 or not (sys.stdin.isatty() and sys.stderr.isatty()):
            raise
        if not click.confirm(f"model '{model}' is not on the server; pull it now?",
                             default=True, err=True):
            raise SystemExit(1) from None
    pull_with_progress(client, model, insecure)


@click.command("run")
@click.argument("model")
@click.argument("prompt", nargs=-1)
@click.option("--verbose", is_flag=True, help="Show timings after each answer.")
@click.option("--keepalive", metavar="DURATION",
              help="How long the model stays loaded afterwards (e.g. 5m, 1h, 0).")
@click.option("--format", "format_", type=click.Choice(["json"]), help="Answer in JSON.")
@click.option("--think", metavar="true|false|low|medium|high", help="A thinking model's thinking.")
@click.option("--hidethinking", is_flag=True, help="Do not print a thinking model's thoughts.")
@insecure_option
@endpoint_option
def run(model: str, prompt: tuple[str, ...], verbose: bool, keepalive: str | None,
        format_: str | None, think: str | None, hidethinking: bool, insecure: bool,
        endpoint: str | None) -> None:
    """Chat with a model: one answer for PROMPT, or an interactive session without one.

    At a terminal, a model the server does not have is pulled first, after asking."""
    settings = RunSettings(format=format_, think=_think_value(think) if think else None,
                           keep_alive=keepalive, verbose=verbose, hide_thinking=hidethinking)
    with client_for(endpoint) as client:
        ensure_model(client, model, insecure)
        text = " ".join(prompt)
        if not text and not sys.stdin.isatty():
            text = sys.stdin.read()
        if text:
            answer(client, model, [{"role": "user", "content": text}], settings)
            return
        Chat(client, model, settings).loop()


class Chat:
    """The interactive session: one conversation, kept until /clear."""

    def __init__(self, client: HomeportClient, model: str, settings: RunSettings) -> None:
        self.client = client
        self.model = model
        self.settings = settings
        self.messages: list[dict[str, Any]] = []

    def loop(self) -> None:
        from prompt_toolkit import PromptSession

        session: PromptSession[str] = PromptSession()
        console.print("[dim]Send a message (/? for help, /bye to quit)[/]")
        while True:
            try:
                line = session.prompt(">>> ")
                if line.lstrip().startswith(MULTILINE):
                    line = self._multiline(session, line.lstrip()[len(MULTILINE):])
            except (EOFError, KeyboardInterrupt):
                return
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                if text.split()[0] in ("/bye", "/exit"):
                    return
                self.command(text)
                continue
            self.send(line)

    @staticmethod
    def _multiline(session: Any, first: str) -> str:
        lines = [first]
        while not lines[-1].rstrip().endswith(MULTILINE):
            lines.append(session.prompt("... "))
        lines[-1] = lines[-1].rstrip()[:-len(MULTILINE)]
        return "\n".join(lines).strip("\n")

    def send(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})
        try:
            reply = answer(self.client, self.model, self.messages, self.settings)
        except KeyboardInterrupt:
            self.messages.pop()
            sys.stdout.write("\n")
            return
        except ServerError as exc:
            self.messages.pop()
            err_console.print(f"Error: {exc}", highlight=False)
            return
        self.messages.append({"role": "assistant", "content": reply})

    def command(self, text: str) -> None:
        words = text.split(maxsplit=3)
        name = words[0]
        if name in ("/?", "/help"):
            console.print(HELP, markup=False)
        elif name == "/clear":
            self.messages.clear()
            console.print("Cleared session context")
        elif name == "/set" and len(words) > 1:
            self._set(words[1], text.split(maxsplit=2)[2] if len(words) > 2 else "")
        elif name == "/show" and len(words) > 1:
            self._show(words[1])
        else:
            console.print(f"Unknown command '{text}'. Type /? for help", markup=False)

    def _set(self, what: str, rest: str) -> None:
        settings = self.settings
        flags = {"verbose": ("verbose", True), "quiet": ("verbose", False),
                 "think": ("think", True), "nothink": ("think", False),
                 "hidethinking": ("hide_thinking", True),
                 "nohidethinking": ("hide_thinking", False), "noformat": ("format", None)}
        if what in flags:
            attribute, value = flags[what]
            setattr(settings, attribute, value)
            console.print(f"Set '{what}' mode.")
        elif what == "format" and rest == "json":
            settings.format = "json"
            console.print("Set format to 'json' mode.")
        elif what == "system" and rest:
            settings.system = rest.strip().strip('"')
            console.print("Set system message.")
        elif what == "parameter" and len(rest.split(maxsplit=1)) == 2:
            parameter, raw = rest.split(maxsplit=1)
            value = parameter_value(parameter, raw)
            if parameter == "stop":
                settings.options.setdefault("stop", []).append(value)
            else:
                settings.options[parameter] = value
            console.print(f"Set parameter '{parameter}' to '{raw}'", markup=False)
        else:
            console.print("Usage: /set parameter NAME VALUE | system TEXT | verbose | quiet | "
                          "format json | noformat | think | nothink", markup=False)

    def _show(self, what: str) -> None:
        try:
            info = self.client.show(self.model)
        except ServerError as exc:
            err_console.print(f"Error: {exc}", highlight=False)
            return
        if what == "info":
            print_model_info(info)
        elif what in ("parameters", "system", "template", "license", "modelfile"):
            shown = info.get(what) or f"No {what} was specified for this model."
            if what == "system" and self.settings.system is not None:
                shown = self.settings.system
            console.print(shown, markup=False)
        else:
            console.print("Usage: /show info | parameters | system | template | license",
                          markup=False)
