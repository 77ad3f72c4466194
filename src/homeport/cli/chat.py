"""``homeport chat``: the chat strategy in a terminal, or one answer down a pipe."""

from __future__ import annotations

import contextlib
import sys

import click
from rich.console import Console

from homeport.cli.chat_commands import Repl
from homeport.cli.options import endpoint_option
from homeport.cli.render import AnswerView
from homeport.cli.strategy import open_for
from homeport.client.adapters import ADAPTERS, Adapter
from homeport.client.chat import ChatSession
from homeport.client.history import Conversation, History
from homeport.client.settings import ClientSettings
from homeport.errors import HomeportError


def _conversation(history: History | None, resume: bool, conversation_id: int | None
                  ) -> Conversation | None:
    if conversation_id is not None or resume:
        if history is None:
            raise HomeportError("--continue and --id need the history; drop --no-history")
        chosen = conversation_id if conversation_id is not None else history.latest_id()
        if chosen is None:
            raise HomeportError("there is no conversation to continue yet")
        return history.load(chosen)
    return None


def _adapter(settings: ClientSettings, requested: str | None, model: str | None,
             endpoint: str | None, conversation: Conversation | None) -> Adapter:
    preferred = None
    if conversation is not None:
        requested = requested or conversation.adapter  # go on where it left off
        preferred = conversation.model if requested == conversation.adapter else None
    return open_for("chat", settings, requested, model, endpoint, preferred)


@click.command("chat")
@click.option("-a", "--adapter", type=click.Choice(ADAPTERS), default=None,
              help="Adapter to chat with (default: strategies.chat in config.toml, then "
                   "anthropic_haiku, or ollama without an Anthropic key).")
@click.option("-m", "--model", default=None, help="Model to use (default: the adapter's).")
@click.option("-p", "--prompt", default=None,
              help="Ask once, print the answer and exit; stdin, when piped, is appended.")
@click.option("-s", "--system", default=None, help="System prompt for this conversation.")
@click.option("-c", "--continue", "resume", is_flag=True,
              help="Continue the most recent conversation.")
@click.option("--id", "conversation_id", type=int, default=None,
              help="Continue the conversation with this id (see `homeport history list`).")
@click.option("--no-history", is_flag=True, help="Do not store this conversation.")
@endpoint_option
def chat(adapter: str | None, model: str | None, prompt: str | None, system: str | None,
         resume: bool, conversation_id: int | None, no_history: bool,
         endpoint: str | None) -> None:
    """Chat with a model: a streaming REPL with slash commands (/help), or one answer with -p.

    Conversations are kept in the history (`homeport history`); each finished turn is saved
    the moment it ends.
    """
    settings = ClientSettings()
    piped = not sys.stdin.isatty()
    if prompt is None and piped:
        prompt = ""  # text piped in is the question
    with contextlib.ExitStack() as stack:
        history = None if no_history else stack.enter_context(History())
        conversation = _conversation(history, resume, conversation_id)
        session = ChatSession(_adapter(settings, adapter, model, endpoint, conversation),
                              history, conversation, system)
        # The adapter in use at the end: /adapter may have replaced (and closed) the first one.
        stack.callback(lambda: session.adapter.close())
        if prompt is None:
            Repl(session, settings, endpoint).run()
        else:
            _one_shot(session, prompt, sys.stdin.read() if piped else "")


def _one_shot(session: ChatSession, prompt: str, stdin_text: str) -> None:
    question = "\n\n".join(part for part in (prompt.strip(), stdin_text.strip()) if part)
    if not question:
        raise HomeportError("nothing to ask: give a prompt with -p, or pipe text in")
    console = Console(highlight=False)
    turn = session.ask(question)
    with AnswerView(console, markdown=sys.stdout.isatty()) as view:
        for event in turn.events():
            view.feed(event)
    turn.commit()
