"""``homeport chat`` driven through a pseudo-terminal (pexpect), and its one-shot mode."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from homeport.client.history import History
from homeport.config import config_file, data_dir
from tests.conftest import MODEL
from tests.support.cli import homeport
from tests.support.fake_anthropic import API_KEY, FakeAnthropic
from tests.support.fake_ollama import FakeOllama
from tests.support.server import PROJECT_SRC

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# 100000 words, 0.03 s apart: the story cannot end before the test has stopped it.
LONG_WORDS = 100_000
LONG = " ".join(f"word{n}" for n in range(LONG_WORDS))
PROMPT = ">>>"


def spawn(*args: str) -> pexpect.spawn:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_SRC), "PROMPT_TOOLKIT_NO_CPR": "1",
           "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "50"}
    child = pexpect.spawn(sys.executable, ["-m", "homeport", "chat", *args], env=env,
                          encoding="utf-8", timeout=90, dimensions=(50, 120))
    child.expect(PROMPT)
    return child


def plain(text: str) -> str:
    return ANSI.sub("", text)


def ask(child: pexpect.spawn, text: str) -> None:
    """Send a question and wait until its answer has ended and the prompt is back."""
    child.sendline(text)
    child.expect(r"tokens in, \d+ out")
    child.expect(PROMPT)


def command(child: pexpect.spawn, text: str, expected: str) -> None:
    child.sendline(text)
    child.expect(expected)
    child.expect(PROMPT)


def quit_(child: pexpect.spawn) -> None:
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_repl_against_the_real_server(base_url: str) -> None:
    config_file().parent.mkdir(parents=True, exist_ok=True)
    config_file().write_text(f'[adapters.ollama]\nmodel = "{MODEL}"\nmax_tokens = 16\n'
                             "temperature = 0.0\n")
    child = spawn("--endpoint", base_url)
    banner = plain(child.before)
    assert "no Anthropic API key, so chat uses the ollama adapter" in banner
    assert f"ollama ({MODEL}) at {base_url} (from --endpoint)" in banner
    ask(child, "Name a colour.")
    command(child, "/model", rf"\* {MODEL}")
    command(child, "/adapter anthropic", "no Anthropic API key for the anthropic adapter")
    command(child, "/adapter ollama", rf"now chatting with \S*ollama\S* \({MODEL}\)")
    command(child, "/nonsense", r"unknown command /nonsense; /help lists them")
    quit_(child)
    with History() as history:
        first = history.load(1)
    assert [turn.user for turn in first.turns] == ["Name a colour."]
    assert first.turns[0].answer.strip()
    assert first.turns[0].usage.output_tokens > 0

    child = spawn("--continue", "--endpoint", base_url)
    assert "continuing conversation 1 (1 turns)" in plain(child.before)
    ask(child, "And another one?")
    child.sendeof()
    child.expect(pexpect.EOF)
    with History() as history:
        assert [turn.user for turn in history.load(1).turns] == ["Name a colour.",
                                                                 "And another one?"]
        assert len(history.recent()) == 1


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        server.script = lambda body: ((LONG, 0.03) if "long story" in body["messages"][-1]["content"]
                                      else (f"Answer {len(server.chat_bodies())}.", 0.0))
        monkeypatch.setenv("OLLAMA_ENDPOINT", server.url)
        config_file().parent.mkdir(parents=True, exist_ok=True)
        config_file().write_text('[strategies.chat]\nadapter = "ollama"\nmodel = "fake-coder"\n')
        yield server


def test_ctrl_c_stops_the_answer_not_the_program(fake: FakeOllama) -> None:
    child = spawn()
    child.sendline("tell me a long story")
    child.expect("word20")
    child.sendintr()
    child.expect(r"\(stopped\)")
    child.expect(PROMPT)
    deadline = time.monotonic() + 60  # the fake notices at its next word, 0.03 s on
    while fake.disconnects == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.disconnects == 1, "the stream was closed, so the server stops generating"
    ask(child, "and now?")
    quit_(child)
    kept = fake.chat_bodies()[-1]["messages"]
    assert [m["role"] for m in kept] == ["user", "assistant", "user"]
    assert kept[1]["content"].startswith("word0 word1 ")
    assert f"word{LONG_WORDS - 1}" not in kept[1]["content"]
    with History() as history:
        turns = history.load(1).turns
    assert turns[0].stopped
    assert not turns[1].stopped
    assert turns[1].answer == "Answer 2."


def test_history_survives_sigkill_mid_answer(fake: FakeOllama) -> None:
    child = spawn()
    ask(child, "first question")
    ask(child, "second question")
    child.sendline("now a long story")
    child.expect("word20")
    os.kill(child.pid, signal.SIGKILL)
    child.expect(pexpect.EOF)
    child.close()
    assert child.signalstatus == signal.SIGKILL
    path = data_dir() / "history.db"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with History() as history:
        turns = history.load(1).turns
    assert [(t.user, t.answer) for t in turns] == [("first question", "Answer 1."),
                                                  ("second question", "Answer 2.")]


def test_file_system_save_and_clear(fake: FakeOllama, tmp_path: Path) -> None:
    attached = tmp_path / "notes.py"
    attached.write_text("print('```')\n")
    child = spawn()
    command(child, f"/file {attached}", "attached .*notes.py \\(2 lines\\)")
    command(child, "/system Be brief.", "system prompt set")
    ask(child, "What does this do?")
    body = fake.chat_bodies()[-1]
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][1]["content"] == (
        f"What does this do?\n\nFile `{attached}`:\n````py\nprint('```')\n````")
    transcript = tmp_path / "chat.md"
    command(child, f"/save {transcript}", "saved to")
    assert "## You" in transcript.read_text()
    assert "Answer 1." in transcript.read_text()
    command(child, "/clear", "new conversation")
    ask(child, "Fresh start?")
    assert [m["role"] for m in fake.chat_bodies()[-1]["messages"]] == ["system", "user"]
    command(child, "/file /no/such/file", "cannot read /no/such/file")
    quit_(child)
    with History() as history:
        assert [c.turn_count for c in history.recent()] == [1, 1]


def test_one_shot_is_pipe_friendly(fake: FakeOllama) -> None:
    result = homeport("chat", "-p", "Summarise:", input="some long text\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Answer 1.\n"
    assert fake.chat_bodies()[-1]["messages"][-1]["content"] == "Summarise:\n\nsome long text"
    result = homeport("chat", "-c", "-p", "And then?")
    assert result.stdout == "Answer 2.\n"
    assert [m["content"] for m in fake.chat_bodies()[-1]["messages"]] == [
        "Summarise:\n\nsome long text", "Answer 1.", "And then?"]
    homeport("chat", "--no-history", "-p", "Not kept")
    with History() as history:
        assert [c.turn_count for c in history.recent()] == [2]
    result = homeport("history", "search", "long text")
    assert "Summarise: some long text" in result.stdout


def test_one_shot_errors_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    result = homeport("chat", "-a", "ollama", "-p", "hi", env={"OLLAMA_ENDPOINT": url})
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: could not reach a server at {url} "
                                    "(from OLLAMA_ENDPOINT): ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_switching_adapters_keeps_the_conversation(fake: FakeOllama,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeAnthropic() as claude:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", claude.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
        child = spawn()
        ask(child, "hello ollama")
        command(child, "/adapter anthropic_haiku",
                r"now chatting with \S*anthropic_haiku\S* \(claude-haiku-5-5\)")
        ask(child, "hello claude")
        command(child, "/model", r"\* claude-haiku-5-5")
        quit_(child)
    sent = [r["body"] for r in claude.requests if r["path"] == "/v1/messages"][-1]
    assert sent["messages"] == [{"role": "user", "content": "hello ollama"},
                                {"role": "assistant", "content": "Answer 1."},
                                {"role": "user", "content": "hello claude"}]
    with History() as history:
        turns = history.load(1).turns
    assert [(t.adapter, t.model) for t in turns] == [("ollama", "fake-coder:latest"),
                                                    ("anthropic_haiku", "claude-haiku-5-5")]
    assert turns[1].answer == claude.reply
    assert (turns[1].usage.input_tokens, turns[1].usage.output_tokens) == (21, 8)
