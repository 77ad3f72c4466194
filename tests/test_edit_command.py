"""``homeport edit`` as a process: fixture replies from a fake Ollama server (real wire format),
then the flow against the real server for what does not depend on the model's skill."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from homeport.config import config_file
from tests.conftest import MODEL
from tests.support.cli import homeport
from tests.support.fake_ollama import FakeOllama
from tests.support.server import PROJECT_SRC

SOURCE = """\
def add(a, b):
    return a+b


def sub(a, b):
    return a-b
"""


def block(search: str, replace: str) -> str:
    return f"<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        monkeypatch.setenv("OLLAMA_ENDPOINT", server.url)
        yield server


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "calc.py"
    path.write_text(SOURCE)
    path.chmod(0o640)
    return path


def edit(*args: str, input: str | None = None):
    return homeport("edit", *args, "--adapter", "ollama", "--model", "fake-coder", input=input)


def test_exact_edit_is_applied_with_a_backup(fake: FakeOllama, source: Path) -> None:
    fake.reply = block("    return a+b", "    return a + b")
    result = edit(f"{source}:1-2", "add spaces around the operator", "--yes")
    assert result.returncode == 0, result.stderr
    assert source.read_text() == SOURCE.replace("a+b", "a + b")
    assert (source.parent / "calc.py.bak").read_text() == SOURCE
    assert oct(source.stat().st_mode & 0o777) == "0o640", "permissions kept"
    assert "-    return a+b" in result.stdout
    assert "+    return a + b" in result.stdout
    assert f"wrote {source}" in result.stderr
    body = fake.chat_bodies()[-1]
    prompt = body["messages"][-1]["content"]
    assert "The region to edit (lines 1-2):\n```py\ndef add(a, b):\n    return a+b\n```" in prompt
    assert "Context after the region (do not change):" in prompt
    assert prompt.endswith("Instruction: add spaces around the operator")
    assert "complete new text of the region" in body["messages"][0]["content"], "small: whole"


@pytest.mark.parametrize(("reply", "tail", "note"), [
    # The model dropped two spaces of indentation: found anyway, put back at the file's depth.
    (block("def sub(a, b):\n  return a-b", "def sub(a, b):\n  return a - b"),
     "def sub(a, b):\n    return a - b\n", "matched whitespace"),
    # The model's copy lost a colon and changed the body: still clearly that function.
    (block("def sub(a, b)\n    return a - b", "def sub(a, b):\n    return b - a"),
     "def sub(a, b):\n    return b - a\n", "matched fuzzy"),
], ids=["reindented", "fuzzy"])
def test_inexact_replies_still_apply(fake: FakeOllama, source: Path, reply: str, tail: str,
                                     note: str) -> None:
    fake.reply = reply
    result = edit(str(source), "change sub", "--yes")
    assert result.returncode == 0, result.stderr
    assert source.read_text().endswith(tail)
    assert source.read_text().startswith("def add(a, b):\n    return a+b\n")
    assert note in result.stderr


def test_no_match_leaves_the_file_untouched(fake: FakeOllama, source: Path) -> None:
    fake.reply = block("class Calculator:\n    pass", "class Calculator:\n    x = 1")
    result = edit(str(source), "x", "--yes")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: could not find the lines the edit replaces")
    assert "The closest lines (" in result.stderr
    assert "Traceback" not in result.stderr
    assert source.read_text() == SOURCE
    assert not (source.parent / "calc.py.bak").exists()


def test_dry_run_shows_the_diff_and_writes_nothing(fake: FakeOllama, source: Path) -> None:
    fake.reply = block("    return a-b", "    return a - b")
    result = edit(f"{source}:5-6", "spaces", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "+    return a - b" in result.stdout
    assert "dry run: nothing was written" in result.stderr
    assert source.read_text() == SOURCE


def test_without_a_terminal_it_asks_for_yes(fake: FakeOllama, source: Path) -> None:
    fake.reply = block("    return a-b", "    return a - b")
    result = edit(str(source), "spaces")
    assert result.returncode == 1
    assert "add --yes to apply" in result.stderr
    assert source.read_text() == SOURCE


def test_a_file_changed_meanwhile_is_not_overwritten(fake: FakeOllama, source: Path) -> None:
    fake.reply = block("    return a-b", "    return a - b")
    fake.on_chat = lambda body: source.write_text(SOURCE + "\n# typed while waiting\n")
    result = edit(str(source), "spaces", "--yes")
    assert result.returncode == 1
    assert "changed on disk while the model was answering; nothing was written" in result.stderr
    assert source.read_text().endswith("# typed while waiting\n")


def test_large_regions_ask_for_blocks(fake: FakeOllama, tmp_path: Path) -> None:
    big = tmp_path / "big.py"
    big.write_text("".join(f"value_{n} = {n}\n" for n in range(100)))
    fake.reply = block("value_50 = 50", "value_50 = 'fifty'")
    result = edit(f"{big}:10-90", "quote 50", "--yes")
    assert result.returncode == 0, result.stderr
    assert "value_50 = 'fifty'\nvalue_51 = 51\n" in big.read_text()
    assert "SEARCH/REPLACE" in fake.chat_bodies()[-1]["messages"][0]["content"]


def test_bad_ranges(fake: FakeOllama, source: Path) -> None:
    result = edit(f"{source}:9-12", "x")
    assert result.returncode == 1
    assert "has 6 lines; line 9 is past its end" in result.stderr
    result = edit(f"{source}:5-2", "x")
    assert "bad line range" in result.stderr
    assert fake.chat_bodies() == []


def test_stdin_filter(fake: FakeOllama) -> None:
    fake.reply = "```python\ndef add(a, b):\n    return a + b\n```"
    result = edit("-", "spaces", input="def add(a, b):\n    return a+b\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "def add(a, b):\n    return a + b\n"
    assert result.stderr == "", "quiet: an editor may read stderr into the buffer"


def test_stdin_filter_gives_the_input_back_on_failure(fake: FakeOllama) -> None:
    fake.reply = block("nothing like this", "x")
    text = "def add(a, b):\n    return a+b\n"
    result = edit("-", "spaces", input=text)
    assert result.returncode == 1
    assert result.stdout == text
    assert result.stderr.startswith("Error: could not find")


def test_against_the_real_server(base_url: str, source: Path) -> None:
    """Whatever the bundled model writes, the flow holds: a diff or a clear error, no write."""
    config_file().parent.mkdir(parents=True, exist_ok=True)
    config_file().write_text("[adapters.ollama]\nmax_tokens = 24\ntemperature = 0.0\n")
    for args in ((f"{source}:1-2", "add a docstring", "--dry-run"),
                 ("-", "add a docstring")):
        result = homeport("edit", *args, "--adapter", "ollama", "--model", MODEL,
                          "--endpoint", base_url, input=SOURCE if args[0] == "-" else None)
        assert "Traceback" not in result.stderr
        if args[0] == "-":
            assert result.returncode in (0, 1)
            if result.returncode == 1:
                assert result.stdout == SOURCE
            else:
                assert result.stdout.strip()
        elif result.returncode == 0:
            assert result.stdout.startswith(f"--- a/{source}") or "changed nothing" in \
                result.stderr
        else:
            assert result.stderr.startswith("Error: ")
        assert source.read_text() == SOURCE


@pytest.mark.parametrize(("answer", "written"), [("y", True), ("n", False)])
def test_at_a_terminal_it_asks_first(fake: FakeOllama, source: Path, answer: str,
                                     written: bool) -> None:
    fake.reply = block("    return a-b", "    return a - b")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_SRC)}
    child = pexpect.spawn(sys.executable, ["-m", "homeport", "edit", str(source), "spaces",
                                           "--adapter", "ollama", "--model", "fake-coder"],
                          env=env, encoding="utf-8", timeout=60)
    child.expect(r"Apply to .*calc\.py\? \[y/N\]")
    child.sendline(answer)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert (source.read_text() == SOURCE.replace("a-b", "a - b")) is written
    assert (source.parent / "calc.py.bak").exists() is written
