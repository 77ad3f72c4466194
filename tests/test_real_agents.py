"""The stock coding agents (Claude Code, Codex, Continue's cn) complete a one-line prompt against
the real server, as they do against Ollama.

Each runs in print/exec mode as a subprocess inside the server's own network namespace (loopback
only; see tests/support/agents.py), with its telemetry off. The bundled model cannot do agent
work, so these assert the protocol: the agent exits 0 with an answer printed, and every request it
made to the route it speaks answered 200 (from the server's /metrics). What each agent sends is in
docs/agent-requests.md.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MODEL
from tests.support.agents import (
    AGENT_PARAMETERS,
    AGENT_TEMPLATE,
    Agent,
    NamespacedServer,
    claude_code,
    codex_oss,
    codex_responses_provider,
    continue_cli,
)

AGENT_MODEL = "agent:latest"  # with its tag: Codex looks for the exact name in /api/tags
PROMPT = "Say hello"


@pytest.fixture(scope="module")
def homeport(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NamespacedServer]:
    """A server alone in its network namespace, with the bundled model under a tool-capable
    template. 8192 tokens (the model's own limit) hold every prompt the agents send below;
    one slot keeps the KV cache small."""
    server = NamespacedServer(tmp_path_factory.mktemp("agents"),
                              env={"HOMEPORT_CONTEXT_LENGTH": "8192",
                                   "HOMEPORT_NUM_PARALLEL": "1"})
    server.start()
    server.curl("/api/create", json.dumps({
        "model": AGENT_MODEL, "from": MODEL, "template": AGENT_TEMPLATE,
        "parameters": AGENT_PARAMETERS, "stream": False}))
    yield server
    server.stop()


def run_agent(homeport: NamespacedServer, agent: Agent, workdir: Path,
              routes: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    """Runs ``agent``; asserts it printed an answer and exited 0, and that each of ``routes``
    was called and answered 200 every time."""
    before = homeport.requests_by_route()
    result = agent.run(homeport, workdir)
    after = homeport.requests_by_route()
    calls = {key: after[key] - before.get(key, 0.0) for key in after
             if after[key] != before.get(key, 0.0)}
    story = (f"exit {result.returncode}\nstdout: {result.stdout[-2000:]}\n"
             f"stderr: {result.stderr[-3000:]}\nrequests: {calls}\n"
             f"server log:\n{homeport.log()[-3000:]}")
    assert result.returncode == 0, story
    assert result.stdout.strip(), story
    for route in routes:
        assert calls.get((route, "200"), 0) >= 1, story
        assert not [key for key in calls if key[0] == route and key[1] != "200"], story
    return result


def test_claude_code_answers_through_the_messages_api(homeport: NamespacedServer,
                                                      tmp_path: Path) -> None:
    # The default request, less its tool list (12k tokens in all, over the model's 8192):
    # still a `system` message inside `messages`, max_tokens 32000, adaptive thinking.
    agent = claude_code(tmp_path / "home", homeport.url, AGENT_MODEL, PROMPT, "--tools", "")
    run_agent(homeport, agent, tmp_path / "work", ("/v1/messages",))


def test_claude_code_sends_its_tools(homeport: NamespacedServer, tmp_path: Path) -> None:
    # --bare: the short system prompt, with the Bash, Edit and Read tools.
    agent = claude_code(tmp_path / "home", homeport.url, AGENT_MODEL, PROMPT, "--bare")
    run_agent(homeport, agent, tmp_path / "work", ("/v1/messages",))


def test_codex_oss_finds_an_ollama_and_answers(homeport: NamespacedServer,
                                               tmp_path: Path) -> None:
    # The version check (Ollama >= 0.13.4), the model list, then /v1/responses with Codex's
    # stock instructions and tools (a namespace of functions, web_search).
    agent = codex_oss(tmp_path / "home", homeport.url, AGENT_MODEL, PROMPT)
    run_agent(homeport, agent, tmp_path / "work",
              ("/api/version", "/api/tags", "/v1/responses"))


def test_codex_with_a_responses_provider(homeport: NamespacedServer, tmp_path: Path) -> None:
    agent = codex_responses_provider(tmp_path / "home", homeport.url, AGENT_MODEL, PROMPT)
    run_agent(homeport, agent, tmp_path / "work", ("/v1/responses",))


def test_continue_answers_through_chat_completions(homeport: NamespacedServer,
                                                   tmp_path: Path) -> None:
    # Continue's CLI speaks to its `ollama` provider through the OpenAI-compatible route.
    agent = continue_cli(tmp_path / "home", homeport.url, AGENT_MODEL, PROMPT)
    run_agent(homeport, agent, tmp_path / "work", ("/v1/chat/completions",))
