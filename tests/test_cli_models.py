"""The terminal commands, run as real processes against the real server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pexpect
import pytest

from tests.conftest import MODEL
from tests.support.server import PROJECT_SRC, ServerProcess, free_port
from tests.support.waiting import wait_for


def homeport(*args: str, endpoint: str | None, input_text: str | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_SRC), "COLUMNS": "200"}
    if endpoint:
        env["OLLAMA_ENDPOINT"] = endpoint
    return subprocess.run([sys.executable, "-m", "homeport", *args], env=env, text=True,
                          capture_output=True, timeout=timeout, input=input_text)


@pytest.fixture(scope="module")
def short(server: ServerProcess) -> Iterator[str]:
    """A copy of the model whose parameters bound every answer: ``run`` has no num_predict flag,
    and an unbounded answer may go on to the end of the context on a busy machine."""
    name = "short-answers:latest"
    created = httpx.post(f"{server.url}/api/create", timeout=120, json={
        "model": name, "from": MODEL, "stream": False,
        "parameters": {"num_predict": 24, "temperature": 0}})
    assert created.status_code == 200, created.text
    yield name
    httpx.request("DELETE", f"{server.url}/api/delete", json={"model": name}, timeout=30)


def test_run_with_a_prompt_streams_an_answer(base_url: str, short: str) -> None:
    result = homeport("run", short, "Write a haiku about ports", endpoint=base_url)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) >= 5


def test_run_reads_the_prompt_from_stdin(base_url: str, short: str) -> None:
    result = homeport("run", short, endpoint=base_url, input_text="Say hello.")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_list_ps_show(base_url: str) -> None:
    loaded = httpx.post(f"{base_url}/api/generate", json={"model": MODEL}, timeout=60)
    assert loaded.json()["done_reason"] == "load"
    listed = homeport("list", endpoint=base_url)
    assert listed.returncode == 0
    assert MODEL in listed.stdout
    assert "Q4_1" in listed.stdout
    running = homeport("ps", endpoint=base_url)
    assert running.returncode == 0
    assert MODEL in running.stdout
    assert "from now" in running.stdout
    shown = homeport("show", MODEL, endpoint=base_url)
    assert shown.returncode == 0
    assert "8192" in shown.stdout
    assert "completion" in shown.stdout
    template = homeport("show", MODEL, "--template", endpoint=base_url)
    assert "<|im_start|>" in template.stdout


def test_cp_and_rm(base_url: str) -> None:
    copied = homeport("cp", MODEL, "cli-copy", endpoint=base_url)
    assert copied.returncode == 0, copied.stderr
    assert "cli-copy:latest" in homeport("list", endpoint=base_url).stdout
    removed = homeport("rm", "cli-copy", endpoint=base_url)
    assert removed.returncode == 0, removed.stderr
    assert "cli-copy" not in homeport("list", endpoint=base_url).stdout


def test_errors_are_one_clear_line(base_url: str) -> None:
    missing = homeport("run", "no-such-model", "hi", endpoint=base_url)
    assert missing.returncode == 1
    assert missing.stderr.strip() == \
        "Error: model 'no-such-model' not found, try pulling it first"
    port = free_port()
    nowhere = homeport("list", endpoint=f"http://127.0.0.1:{port}")
    assert nowhere.returncode == 1
    lines = nowhere.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "Traceback" not in nowhere.stderr
    assert f"127.0.0.1:{port}" in lines[0]
    assert "OLLAMA_ENDPOINT" in lines[0]


def spawn_run(base_url: str) -> pexpect.spawn:
    """``homeport run MODEL`` at a pseudo-terminal, its first prompt read."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_SRC), "OLLAMA_ENDPOINT": base_url,
           "PROMPT_TOOLKIT_NO_CPR": "1"}
    child = pexpect.spawn(sys.executable, ["-m", "homeport", "run", MODEL], env=env,
                          encoding="utf-8", timeout=120)
    child.expect(">>>")
    return child


def test_interactive_run(base_url: str) -> None:
    child = spawn_run(base_url)
    try:
        child.sendline("/set parameter num_predict 40")  # SmolLM2 may otherwise ramble on
        child.expect(">>>")
        child.sendline("What is the capital of France?")
        child.expect(">>>")
        assert len(child.before.strip()) > 10
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_run_flags_as_ollama_run_has_them(base_url: str, short: str) -> None:
    verbose = homeport("run", short, "Say hello.", "--verbose", endpoint=base_url)
    assert verbose.returncode == 0, verbose.stderr
    assert verbose.stdout.strip()
    for label in ("total duration:", "prompt eval count:", "eval count:", "eval rate:"):
        assert label in verbose.stderr, verbose.stderr
    running = homeport("ps", endpoint=base_url)
    kept = homeport("run", short, "Say hello.", "--keepalive", "0", endpoint=base_url)
    assert kept.returncode == 0, kept.stderr
    assert short in running.stdout
    # keepalive 0: unloaded once the answer is done (a step after the run has printed it)
    assert wait_for(lambda: short not in homeport("ps", endpoint=base_url).stdout)
    refused = homeport("run", short, "hi", "--think", "true", endpoint=base_url)
    assert refused.returncode == 1
    assert "does not support thinking" in refused.stderr



def test_interactive_set_show_and_multiline(base_url: str) -> None:
    child = spawn_run(base_url)
    try:
        child.sendline("/set parameter num_predict 5")
        child.expect("Set parameter 'num_predict' to '5'")
        child.sendline("/set verbose")
        child.expect("Set 'verbose' mode.")
        child.sendline('"""Tell me a story')
        child.expect(r"\.\.\.")
        child.sendline('about a lighthouse."""')
        child.expect(r"eval count:\s+5 token\(s\)")  # num_predict reached the server
        child.expect(">>>")
        child.sendline("/set format json")
        child.expect("Set format to 'json' mode.")
        child.sendline("Describe a colour.")
        child.expect(r"[{\[]")  # the grammar makes the answer JSON from its first token
        child.expect("eval count:")
        child.expect(">>>")
        child.sendline("/show info")
        child.expect("context length")
        child.expect("8192")
        child.sendline("/set system You are a pirate.")
        child.expect("Set system message.")
        child.sendline("/show system")
        child.expect("You are a pirate.")
        child.sendline("/nonsense")
        child.expect("Unknown command '/nonsense'")
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
