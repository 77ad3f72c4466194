"""Tokens: `homeport serve --host 0.0.0.0 --expose` reached from a "LAN stranger" namespace.

No tailscaled runs here, so whois cannot vouch for anyone: a stranger gets in with a token made by
`homeport token create` and with nothing else. The server also writes prompts and answers to the
audit log (HOMEPORT_AUDIT_CONTENT), which is off by default.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MODEL
from tests.support.netns import Lab, LabUnavailable, Peer
from tests.support.server import ServerProcess, isolated_env
from tests.support.tailnet import TailnetServer, wait_for_audit


def homeport_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "homeport", *args],
                          env={**isolated_env(home), "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=60)


def create_token(home: Path, *args: str) -> str:
    result = homeport_cli(home, "token", "create", *args)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.startswith("homeport_")
    return token


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TailnetServer, dict[str, str]]]:
    lab = Lab()
    try:
        lab.open()
    except LabUnavailable as exc:
        pytest.skip(f"network namespaces cannot be made here, LAN token tests skipped: {exc}")
    home = tmp_path_factory.mktemp("lan")
    server = ServerProcess(home, env={
        "HOMEPORT_TAILSCALED_SOCKET": str(home / "no-tailscaled.sock"),
        "HOMEPORT_AUDIT_CONTENT": "1",
        "HOMEPORT_CONTEXT_LENGTH": "1024",
    }, host="0.0.0.0", args=("--expose",))
    try:
        lab.add_lan_stranger()
        tokens = {
            "ci": create_token(home, "ci", "--models", "smollm2*"),
            "llama": create_token(home, "llama", "--models", "llama3*,qwen*"),
            "old": create_token(home, "old", "--expires", "1s"),
            "gone": create_token(home, "gone"),
        }
        revoked = homeport_cli(home, "token", "revoke", "gone")
        assert revoked.returncode == 0, revoked.stderr
        time.sleep(1.1)  # "old" has expired before the server starts
        server.start()
        yield TailnetServer(server, None, lab, home / "policy.toml"), tokens
    finally:
        server.stop()
        lab.close()


def stranger(lan: tuple[TailnetServer, dict[str, str]]) -> Peer:
    return lan[0].lab.peers["stranger"]


def lan_url(lan: tuple[TailnetServer, dict[str, str]]) -> str:
    served = lan[0]
    return f"http://{served.lab.lan_host_ipv4}:{served.server.port}"


def test_the_banner_says_the_server_is_exposed(lan: tuple[TailnetServer, dict[str, str]]) -> None:
    log = lan[0].server.log()
    assert f"EXPOSED beyond the tailnet on 0.0.0.0:{lan[0].server.port}" in log
    assert "4 token holders" not in log  # expired and revoked tokens are not counted
    assert "2 token holders" in log


def test_a_valid_token_lets_the_lan_stranger_in(lan: tuple[TailnetServer, dict[str, str]]) -> None:
    served, tokens = lan
    result = served.ollama(stranger(lan), "chat", MODEL, "--token", tokens["ci"],
                           "--num-predict", "4", url=lan_url(lan))
    assert result["status"] == 200, result
    assert result["done"] is True
    assert result["content"]
    line = wait_for_audit(served.server.home, route="/api/chat", identity="token:ci")
    assert (line["via"], line["status"]) == ("token", 200)
    assert line["address"] == stranger(lan).ipv4
    # HOMEPORT_AUDIT_CONTENT is on for this server: prompt and answer are kept
    assert line["prompt"] == "Say hi."
    assert line["answer"] == result["content"]


def test_anthropic_clients_may_send_the_token_as_x_api_key(
        lan: tuple[TailnetServer, dict[str, str]]) -> None:
    """Claude Code puts ANTHROPIC_API_KEY in x-api-key; a homeport token there is a token."""
    served, tokens = lan
    url = lan_url(lan) + "/v1/messages"
    body = '{"model": "smollm2:135m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}'
    allowed = served.curl(stranger(lan), url, "-H", f"x-api-key: {tokens['ci']}", "-d", body)
    assert allowed.status == 200, allowed.body
    assert allowed.json()["type"] == "message"
    refused = served.curl(stranger(lan), url, "-H", "x-api-key: ollama", "-d", body)
    assert refused.status == 401
    assert refused.json()["error"]["type"] == "authentication_error"


def test_no_token_or_a_bad_one_gets_401(lan: tuple[TailnetServer, dict[str, str]]) -> None:
    served, tokens = lan
    url = lan_url(lan) + "/api/tags"
    peer = stranger(lan)
    cases = {
        "none": [],
        "not a homeport token": ["-H", "Authorization: Bearer ollama"],
        "wrong": ["-H", "Authorization: Bearer homeport_" + "x" * 43],
        "expired": ["-H", f"Authorization: Bearer {tokens['old']}"],
        "revoked": ["-H", f"Authorization: Bearer {tokens['gone']}"],
    }
    messages = {}
    for case, args in cases.items():
        reply = served.curl(peer, url, *args)
        assert reply.status == 401, (case, reply.body)
        assert reply.headers["www-authenticate"] == 'Bearer realm="homeport"'
        assert "models" not in reply.json()
        messages[case] = reply.json()["error"]
    assert "expired on" in messages["expired"]
    assert "was revoked" in messages["revoked"]
    assert "invalid token" in messages["wrong"]
    client = served.ollama(peer, "show", MODEL, "--token", "homeport_wrong", url=lan_url(lan))
    assert client["status"] == 401


def test_a_token_is_limited_to_its_models_and_is_not_admin(
        lan: tuple[TailnetServer, dict[str, str]]) -> None:
    served, tokens = lan
    peer = stranger(lan)
    narrow = served.ollama(peer, "show", MODEL, "--token", tokens["llama"], url=lan_url(lan))
    assert narrow["status"] == 403
    assert "--models" in narrow["error"]
    listed = served.ollama(peer, "tags", "", "--token", tokens["llama"], url=lan_url(lan))
    assert listed["models"] == []
    copy = served.curl(peer, lan_url(lan) + "/api/copy", "-H",
                       f"Authorization: Bearer {tokens['ci']}",
                       "-d", '{"source": "smollm2:135m", "destination": "x:1"}')
    assert copy.status == 403
    assert "not an admin token" in copy.json()["error"]


def test_tokens_created_and_revoked_while_serving_work_at_once(
        lan: tuple[TailnetServer, dict[str, str]]) -> None:
    served, _ = lan
    home = served.server.home
    token = create_token(home, "fresh", "--admin")
    header = ["-H", f"Authorization: Bearer {token}"]
    url = lan_url(lan) + "/api/tags"
    assert served.curl(stranger(lan), url, *header).status == 200
    assert homeport_cli(home, "token", "revoke", "fresh").returncode == 0
    assert served.curl(stranger(lan), url, *header).status == 401
    listing = homeport_cli(home, "token", "list")
    assert listing.returncode == 0
    states = {line.split()[0]: line.split()[-1] for line in listing.stdout.splitlines()[1:]}
    assert states == {"ci": "active", "llama": "active", "old": "expired", "gone": "revoked",
                      "fresh": "revoked"}
    # the token itself is never stored, only its hash
    stored = (home / "data" / "tokens.json").read_text()
    assert token not in stored
    assert oct((home / "data" / "tokens.json").stat().st_mode & 0o777) == "0o600"


def test_token_create_refuses_bad_input(lan: tuple[TailnetServer, dict[str, str]]) -> None:
    home = lan[0].server.home
    duplicate = homeport_cli(home, "token", "create", "ci")
    assert duplicate.returncode == 1
    assert "a token named 'ci' exists" in duplicate.stderr
    assert homeport_cli(home, "token", "create", "../evil").returncode == 1
    bad_span = homeport_cli(home, "token", "create", "x", "--expires", "soon")
    assert bad_span.returncode == 2
    assert "30d" in bad_span.stderr
    assert homeport_cli(home, "token", "revoke", "nobody").returncode == 1
