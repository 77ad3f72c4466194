"""The real coding agents (Claude Code, Codex, Continue's ``cn``), as ``./dev setup`` installs them
in .node/, run against a homeport server that lives alone in a network namespace of its own.

The namespace holds nothing but loopback and the server, and each agent runs inside it (nsenter):
whatever an agent would send anywhere else (telemetry, update checks) has nowhere to go, and the
only thing it can reach is the server under test. Every agent also gets a fresh HOME (its config,
sessions and caches) and an environment of its own, not the test runner's.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.server import ServerProcess

NODE_BIN = Path(__file__).resolve().parents[2] / ".node" / "node_modules" / ".bin"
# A busy 2-core machine evaluates a few thousand prompt tokens in minutes, not seconds.
AGENT_TIMEOUT = 900.0
# Starts the command in a new network namespace with only loopback, up.
_ALONE = ("unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh")

# A ChatML template (the bundled model's own format) that mentions ``tools``, so the model gets the
# "tools" capability the agents need, but renders only how many there are: the agents' tool
# schemas run to 20 KB, and a 135M model can do nothing with them but slow the test down.
AGENT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}"
    "{% if tools %}<|im_start|>system\n{{ tools | length }} tools are available.<|im_end|>\n"
    "{% endif %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Stop at the first sentence's end: Claude Code takes an answer cut by max_tokens for an error,
# and the agents send no limit a tiny model would reach soon (Claude Code: max_tokens 32000).
AGENT_PARAMETERS = {"temperature": 0, "seed": 7, "stop": ["\n", ".", "!", "?"]}


def agent_binary(name: str) -> Path:
    path = NODE_BIN / name
    assert path.exists(), f"{path} is missing: run ./dev setup (it installs the coding agents)"
    return path


class NamespacedServer(ServerProcess):
    """``homeport serve`` alone in a fresh network namespace; ``inside`` runs a command there."""

    def __init__(self, home: Path, env: Mapping[str, str] | None = None) -> None:
        super().__init__(home, env=env, wrapper=_ALONE)

    def inside(self, argv: list[str], env: Mapping[str, str] | None = None,
               cwd: Path | None = None, stdin: str | None = None,
               timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        assert self.process is not None
        return subprocess.run(
            ["nsenter", f"--net=/proc/{self.process.pid}/ns/net", "--", *argv],
            env=dict(env) if env is not None else None, cwd=cwd, input=stdin,
            capture_output=True, text=True, timeout=timeout)

    def curl(self, path: str, json_body: str | None = None, timeout: float = 300.0) -> str:
        """The body of a GET (or, with ``json_body``, a POST) to the server; a non-2xx fails."""
        args = ["curl", "-sS", "--fail-with-body", "--max-time", str(int(timeout))]
        if json_body is not None:
            args += ["-H", "content-type: application/json", "--data-binary", "@-"]
        result = self.inside([*args, self.url + path], stdin=json_body, timeout=timeout + 10)
        assert result.returncode == 0, f"{path}: {result.stdout} {result.stderr}"
        return result.stdout

    def answers(self) -> bool:
        return self.inside(["curl", "-sf", "--max-time", "1", self.url + "/"]).returncode == 0

    def requests_by_route(self) -> dict[tuple[str, str], float]:
        """homeport_requests_total from /metrics, as {(route, status): count}."""
        counts = {}
        for family in text_string_to_metric_families(self.curl("/metrics")):
            for sample in family.samples:
                if sample.name == "homeport_requests_total":
                    counts[(sample.labels["route"], sample.labels["status"])] = sample.value
        return counts


@dataclass
class Agent:
    """One agent's command line and environment, its config written under ``home``."""

    argv: list[str]
    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, server: NamespacedServer, workdir: Path) -> subprocess.CompletedProcess[str]:
        workdir.mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
               "LANG": "C.UTF-8", **self.env}
        try:
            return server.inside(self.argv, env=env, cwd=workdir, stdin="",
                                 timeout=AGENT_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{self.argv[0]} ran past {AGENT_TIMEOUT}s; "
                                 f"server log:\n{server.log()[-3000:]}") from exc


def _home(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    return home


def claude_code(home: Path, server_url: str, model: str, prompt: str, *flags: str) -> Agent:
    """``claude -p``: Anthropic's Messages API at ANTHROPIC_BASE_URL, with a bearer token."""
    return Agent(
        [str(agent_binary("claude")), "-p", prompt, "--model", model, *flags], _home(home),
        {"ANTHROPIC_BASE_URL": server_url, "ANTHROPIC_AUTH_TOKEN": "homeport-test",
         "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
         "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1"})


def _codex_home(home: Path, config: str) -> Path:
    codex_home = _home(home) / ".codex"
    codex_home.mkdir(exist_ok=True)
    (codex_home / "config.toml").write_text(config + "\n[analytics]\nenabled = false\n")
    return codex_home


def codex_oss(home: Path, server_url: str, model: str, prompt: str) -> Agent:
    """``codex exec --oss``: Codex's built-in Ollama provider (version check, tags, /v1/responses)."""
    codex_home = _codex_home(home, "")
    return Agent(
        [str(agent_binary("codex")), "exec", "--skip-git-repo-check", "--oss",
         "--local-provider", "ollama", "-m", model, prompt], home,
        {"CODEX_HOME": str(codex_home), "CODEX_OSS_BASE_URL": f"{server_url}/v1"})


def codex_responses_provider(home: Path, server_url: str, model: str, prompt: str) -> Agent:
    """``codex exec`` with a provider of its own in config.toml: ``wire_api = "responses"``."""
    codex_home = _codex_home(home, "\n".join([
        f'model = "{model}"', 'model_provider = "homeport"',
        "[model_providers.homeport]", 'name = "homeport"', f'base_url = "{server_url}/v1"',
        'wire_api = "responses"', 'env_key = "HOMEPORT_TOKEN"',
        # A refusal is final: no retries with backoff to wait out.
        "request_max_retries = 0", "stream_max_retries = 0"]))
    return Agent([str(agent_binary("codex")), "exec", "--skip-git-repo-check", prompt], home,
                 {"CODEX_HOME": str(codex_home), "HOMEPORT_TOKEN": "homeport-test"})


def continue_cli(home: Path, server_url: str, model: str, prompt: str) -> Agent:
    """``cn -p`` with a config.yaml whose one chat model uses Continue's ``ollama`` provider."""
    config = _home(home) / "config.yaml"
    config.write_text("\n".join([
        "name: homeport", "version: 0.0.1", "schema: v1", "models:",
        f"  - name: {model}", "    provider: ollama", f"    model: {model}",
        f"    apiBase: {server_url}", "    roles: [chat]", ""]))
    return Agent([str(agent_binary("cn")), "--config", str(config), "-p", prompt], home,
                 {"CONTINUE_GLOBAL_DIR": str(home / ".continue"),
                  "CONTINUE_CLI_ENABLE_TELEMETRY": "0", "CONTINUE_METRICS_ENABLED": "0"})
