"""`homeport serve --tailnet` on a fake tailnet: peers in network namespaces, a fake tailscaled.

The server binds the bridge address the fake tailscaled reports as this node's tailnet IP. "alice"
and "bob" are tailnet peers (whois knows them), "stranger" sits on another link. Every client runs
in its peer's namespace: curl, and the official ``ollama`` client.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import MODEL
from tests.support.fake_tailscaled import FakeTailscaled, Node
from tests.support.netns import Lab, Peer
from tests.support.server import ServerProcess
from tests.support.tailnet import TailnetServer, audit_lines, tailnet_lab, wait_for_audit

CAPABILITY = "example.com/cap/homeport"


def base_policy(home: Path) -> str:
    return f"""
[tailnet]
owner = true

[[allow]]
logins = ["alice@example.com"]
models = ["smollm2*"]

[serve]
proxy = "unix:{home / 'serve.sock'}"
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with tailnet_lab("alice", "bob", lan_stranger=True) as lab:
        yield lab


def default_nodes(lab: Lab) -> list[Node]:
    return [Node(lab.peers["alice"].ipv4, "alice@example.com", 10, "alice-laptop"),
            Node(lab.peers["alice"].ipv6, "alice@example.com", 10, "alice-laptop"),
            Node(lab.peers["bob"].ipv4, "bob@example.com", 20, "bob-desktop")]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def tailnet(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TailnetServer]:
    home = tmp_path_factory.mktemp("tailnet")
    fake = FakeTailscaled(home / "tailscaled.sock")
    fake.state.self_ips = [lab.server_ipv4, lab.server_ipv6]
    fake.state.backend_state = "Starting"  # as at boot: the server has to wait
    for node in default_nodes(lab):
        fake.add(node)
    fake.start()
    policy_path = home / "policy.toml"
    policy_path.write_text(base_policy(home))
    server = ServerProcess(home, env={
        "HOMEPORT_TAILSCALED_SOCKET": str(fake.socket_path),
        "HOMEPORT_POLICY": str(policy_path),
        "HOMEPORT_CONTEXT_LENGTH": "1024",
    }, args=("--tailnet",))
    try:
        server.start(wait=False)
        deadline = time.monotonic() + 60
        while "waiting for the tailnet" not in server.log():
            assert server.alive(), server.log()
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        listening_while_waiting = port_open("127.0.0.1", server.port)
        fake.state.backend_state = "Running"
        server.wait_ready()
        yield TailnetServer(server, fake, lab, policy_path, listening_while_waiting)
    finally:
        server.stop()
        fake.stop()


@pytest.fixture(autouse=True)
def fresh_tailnet(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts from the base policy and the default whois answers."""
    yield
    if "tailnet" not in request.fixturenames:
        return
    tailnet: TailnetServer = request.getfixturevalue("tailnet")
    state = tailnet.fake.state
    state.nodes.clear()
    for node in default_nodes(tailnet.lab):
        tailnet.fake.add(node)
    state.whois_status, state.userspace_node = 200, None
    changed_mode = not state.tun
    state.tun = True
    if tailnet.fake._server is None:
        tailnet.fake.start()
    base = base_policy(tailnet.server.home)
    if changed_mode or tailnet.policy_path.read_text() != base:
        tailnet.apply_policy(base)


def whois_addresses(tailnet: TailnetServer) -> list[str]:
    return [parse_qs(urlsplit(path).query)["addr"][0] for path in tailnet.fake.whois_asked()]


# --- binding --------------------------------------------------------------------------------------


def test_waits_for_the_tailnet_then_listens_on_it_and_loopback_only(tailnet: TailnetServer) -> None:
    log = tailnet.server.log()
    port = tailnet.server.port
    assert "waiting for the tailnet to come up: tailscaled is Starting" in log
    assert tailnet.listening_while_waiting is False
    lab = tailnet.lab
    assert (f"listening on 127.0.0.1:{port}, {lab.server_ipv4}:{port}, "
            f"[{lab.server_ipv6}]:{port}") in log
    assert "over your tailnet at" in log
    # The LAN side of this machine is not listened on at all.
    stranger = lab.peers["stranger"]
    refused = tailnet.curl(stranger, f"http://{lab.lan_host_ipv4}:{port}/", timeout=5)
    assert refused.status == 0
    assert "curl: (7)" in refused.body  # could not connect: nothing listens there


def test_a_stranger_routing_to_the_tailnet_address_is_still_refused(
        tailnet: TailnetServer) -> None:
    stranger = tailnet.lab.peers["stranger"]
    reply = tailnet.curl(stranger, tailnet.tailnet_url + "/api/tags")
    assert reply.status == 401
    assert "token" in reply.json()["error"]
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert any(addr.startswith(f"{stranger.ipv4}:") for addr in whois_addresses(tailnet))


# --- identity and policy ----------------------------------------------------------------------------


def test_an_allowed_user_streams_an_answer(tailnet: TailnetServer) -> None:
    alice = tailnet.lab.peers["alice"]
    before = len(audit_lines(tailnet.server.home))
    result = tailnet.ollama(alice, "chat", MODEL, "--num-predict", "6")
    assert result["status"] == 200, result
    assert result["chunks"] >= 2
    assert result["done"] is True
    assert result["content"].strip()
    # whois was asked with the peer's full ip:port
    assert any(re.fullmatch(rf"{re.escape(alice.ipv4)}:\d+", addr)
               for addr in whois_addresses(tailnet))
    line = wait_for_audit(tailnet.server.home, before, route="/api/chat",
                          identity="alice@example.com")
    assert line["node"] == "alice-laptop"
    assert line["via"] == "tailnet"
    assert line["model"] == MODEL
    assert line["status"] == 200
    assert line["tokens_in"] > 0
    assert 0 < line["tokens_out"] <= 6
    assert "prompt" not in line
    assert "Say hi." not in (tailnet.server.home / "data" / "audit" / "audit.jsonl").read_text()


def test_a_user_not_in_the_policy_gets_403_and_no_output(tailnet: TailnetServer) -> None:
    bob = tailnet.lab.peers["bob"]
    result = tailnet.ollama(bob, "chat", MODEL)
    assert result["status"] == 403
    assert 'logins = ["bob@example.com"]' in result["error"]
    body = '{"model": "smollm2:135m", "messages": [{"role": "user", "content": "hi"}]}'
    reply = tailnet.curl(bob, tailnet.tailnet_url + "/api/chat", "-d", body)
    assert reply.status == 403
    assert set(reply.json()) == {"error"}
    openai = tailnet.curl(bob, tailnet.tailnet_url + "/v1/chat/completions",
                          "-H", "Content-Type: application/json", "-d", body)
    assert openai.status == 403
    assert openai.json()["error"]["type"] == "permission_error"
    assert "choices" not in openai.body


def test_a_model_outside_the_allowed_globs_gets_403(tailnet: TailnetServer) -> None:
    tailnet.apply_policy('[[allow]]\nlogins = ["alice@example.com"]\nmodels = ["llama3*"]\n')
    alice = tailnet.lab.peers["alice"]
    result = tailnet.ollama(alice, "show", MODEL)
    assert result["status"] == 403
    assert 'add "smollm2:135m" to models' in result["error"]
    # a model that does not exist is refused the same way: no hint that it is missing
    assert tailnet.ollama(alice, "show", "nothing-here:1")["status"] == 403
    assert tailnet.ollama(alice, "tags")["models"] == []


def test_whois_errors_and_unknown_peers_deny(tailnet: TailnetServer) -> None:
    alice = tailnet.lab.peers["alice"]
    url = tailnet.tailnet_url + "/api/tags"
    tailnet.fake.state.whois_status = 500
    failed = tailnet.curl(alice, url)
    assert failed.status == 403
    assert "could not confirm who you are" in failed.json()["error"]
    tailnet.fake.state.whois_status = 404
    assert tailnet.curl(alice, url).status == 401
    tailnet.fake.state.whois_status = 200
    tailnet.fake.stop()  # tailscaled gone: nobody can be recognised, only a token would do
    down = tailnet.curl(alice, url)
    assert down.status == 401
    assert "token" in down.json()["error"]
    assert "models" not in down.body


def test_a_tagged_node_is_denied_until_its_tag_is_allowed(tailnet: TailnetServer) -> None:
    bob = tailnet.lab.peers["bob"]
    tailnet.fake.add(Node(bob.ipv4, "bob@example.com", 20, "ci-runner", tags=["tag:ci"]))
    # A rule for bob's login does not cover his tagged node.
    tailnet.apply_policy('[[allow]]\nlogins = ["bob@example.com"]\n')
    denied = tailnet.ollama(bob, "show", MODEL)
    assert denied["status"] == 403
    assert 'tags = ["tag:ci"]' in denied["error"]
    tailnet.apply_policy('[[allow]]\ntags = ["tag:ci"]\nmodels = ["smollm2*"]\n')
    assert tailnet.ollama(bob, "show", MODEL)["status"] == 200


def test_a_capability_grant_in_capmap_allows(tailnet: TailnetServer) -> None:
    bob = tailnet.lab.peers["bob"]
    tailnet.apply_policy(f'[tailnet]\ncapability = "{CAPABILITY}"\n')
    assert tailnet.ollama(bob, "show", MODEL)["status"] == 403
    tailnet.fake.add(Node(bob.ipv4, "bob@example.com", 20, "bob-desktop",
                          capmap={CAPABILITY: [{"models": ["smollm2*"]}]}))
    assert tailnet.ollama(bob, "show", MODEL)["status"] == 200
    tailnet.fake.add(Node(bob.ipv4, "bob@example.com", 20, "bob-desktop",
                          capmap={CAPABILITY: [{"models": ["llama3*"]}],
                                  "example.com/cap/other": [{"models": ["*"]}]}))
    narrowed = tailnet.ollama(bob, "show", MODEL)
    assert narrowed["status"] == 403
    assert f"{CAPABILITY} grant" in narrowed["error"]


def test_the_owners_own_devices_are_allowed(tailnet: TailnetServer) -> None:
    bob = tailnet.lab.peers["bob"]
    tailnet.fake.add(Node(bob.ipv4, "owner@example.com", 1, "owner-phone"))
    assert tailnet.ollama(bob, "show", MODEL)["status"] == 200
    tailnet.apply_policy("[tailnet]\nowner = false\n")
    assert tailnet.ollama(bob, "show", MODEL)["status"] == 403


def test_forged_identity_headers_from_a_peer_are_ignored(tailnet: TailnetServer) -> None:
    bob, alice = tailnet.lab.peers["bob"], tailnet.lab.peers["alice"]
    forged = ["-H", "Tailscale-User-Login: alice@example.com",
              "-H", f"X-Forwarded-For: {alice.ipv4}"]
    reply = tailnet.curl(bob, tailnet.tailnet_url + "/api/tags", *forged)
    assert reply.status == 403
    assert "bob@example.com" in reply.json()["error"]
    stranger = tailnet.lab.peers["stranger"]
    assert tailnet.curl(stranger, tailnet.tailnet_url + "/api/tags", *forged).status == 401


def test_whois_is_asked_once_per_connection(tailnet: TailnetServer) -> None:
    alice = tailnet.lab.peers["alice"]
    url = tailnet.tailnet_url + "/api/version"
    before = len(tailnet.fake.whois_asked())
    # one curl, three requests on one kept-alive connection
    reply = tailnet.curl(alice, url, "-o", "/dev/null", url, "-o", "/dev/null", url)
    assert reply.status == 200
    assert len(tailnet.fake.whois_asked()) == before + 1
    tailnet.curl(alice, url)  # a new connection is asked about again
    assert len(tailnet.fake.whois_asked()) == before + 2


def test_requests_on_a_kept_alive_connection_are_not_delayed(tailnet: TailnetServer) -> None:
    """The sockets homeport binds itself must get TCP_NODELAY, or every response on a kept-alive
    connection waits ~40 ms for a delayed ACK."""
    alice = tailnet.lab.peers["alice"]
    url = tailnet.tailnet_url + "/api/version"
    result = tailnet.lab.run(alice, ["curl", "-sS", "-o", "/dev/null", "-o", "/dev/null",
                                     "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
                                     "-w", "%{time_total}\\n", *[url] * 5])
    assert result.returncode == 0, result.stderr
    seconds = sorted(float(line) for line in result.stdout.split())
    assert len(seconds) == 5
    assert seconds[2] < 0.025, seconds


def test_an_ipv6_tailnet_peer_is_identified_by_its_full_address(tailnet: TailnetServer) -> None:
    alice = tailnet.lab.peers["alice"]
    reply = tailnet.curl(alice, tailnet.tailnet_url6 + "/api/tags")
    assert reply.status == 200
    assert MODEL in [model["name"] for model in reply.json()["models"]]
    assert any(re.fullmatch(rf"\[{re.escape(alice.ipv6)}\]:\d+", addr)
               for addr in whois_addresses(tailnet))


# --- browsers -----------------------------------------------------------------------------------


def test_a_foreign_host_header_gets_403(tailnet: TailnetServer) -> None:
    alice = tailnet.lab.peers["alice"]
    url = tailnet.tailnet_url + "/api/tags"
    rebound = tailnet.curl(alice, url, "-H", "Host: evil.example")
    assert rebound.status == 403
    assert "DNS rebinding" in rebound.json()["error"]
    assert tailnet.curl(None, tailnet.server.url + "/api/tags", "-H", "Host: evil.example"
                        ).status == 403
    port = tailnet.server.port
    for name in (f"homebox.tail1234.ts.net:{port}", "homebox", f"localhost:{port}"):
        assert tailnet.curl(alice, url, "-H", f"Host: {name}").status == 200, name


def test_a_foreign_origin_gets_no_cors_headers(tailnet: TailnetServer) -> None:
    alice = tailnet.lab.peers["alice"]
    url = tailnet.tailnet_url + "/api/tags"
    foreign = tailnet.curl(alice, url, "-H", "Origin: https://evil.example")
    assert foreign.status == 403
    assert not any(name.startswith("access-control-") for name in foreign.headers)
    preflight = tailnet.curl(alice, tailnet.tailnet_url + "/api/chat", "-X", "OPTIONS",
                             "-H", "Origin: https://evil.example",
                             "-H", "Access-Control-Request-Method: POST")
    assert preflight.status == 403
    assert "access-control-allow-origin" not in preflight.headers
    local_page = tailnet.curl(alice, url, "-H", "Origin: http://localhost:5173")
    assert local_page.status == 200
    assert local_page.headers["access-control-allow-origin"] == "http://localhost:5173"


# --- management, limits -----------------------------------------------------------------------


def test_admin_only_routes_are_refused_to_non_admins(tailnet: TailnetServer) -> None:
    alice = tailnet.lab.peers["alice"]
    url = tailnet.tailnet_url
    copy = '{"source": "smollm2:135m", "destination": "alice-copy:1"}'
    refused = tailnet.curl(alice, url + "/api/copy", "-d", copy)
    assert refused.status == 403
    assert "may not manage models" in refused.json()["error"]
    assert "admin = true" in refused.json()["error"]
    for method, path in (("DELETE", "/api/delete"), ("POST", "/api/pull"),
                         ("POST", "/api/create"), ("POST", "/api/push"),
                         ("POST", "/api/blobs/sha256:" + "0" * 64)):
        reply = tailnet.curl(alice, url + path, "-X", method, "-d", '{"model": "alice-copy:1"}')
        assert reply.status == 403, (path, reply.body)
    tailnet.apply_policy('[[allow]]\nlogins = ["alice@example.com"]\nadmin = true\n'
                         'models = ["alice-*"]\n')
    # an admin still cannot copy a model outside her globs into a name inside them
    assert tailnet.curl(alice, url + "/api/copy", "-d", copy).status == 403
    tailnet.apply_policy('[[allow]]\nlogins = ["alice@example.com"]\nadmin = true\n')
    assert tailnet.curl(alice, url + "/api/copy", "-d", copy).status == 200
    deleted = tailnet.curl(alice, url + "/api/delete", "-X", "DELETE",
                           "-d", '{"model": "alice-copy:1"}')
    assert deleted.status == 200


def start_long_stream(tailnet: TailnetServer, peer: Peer) -> subprocess.Popen[bytes]:
    """A chat streaming from the peer (up to 400 tokens), returned once its first token came."""
    body = ('{"model": "smollm2:135m", "messages": [{"role": "user", "content": "Tell a story."}],'
            ' "options": {"num_predict": 400, "temperature": 0}}')
    stream = subprocess.Popen(["ip", "netns", "exec", peer.namespace, "curl", "-sS", "-N",
                               tailnet.tailnet_url + "/api/chat", "-d", body],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert stream.stdout is not None
    assert b'"done":false' in stream.stdout.readline()  # it is streaming now
    return stream


def _as(tailnet: TailnetServer, login: str, user_id: int) -> None:
    """Make bob's machine someone new, so each limit starts from fresh counters."""
    tailnet.fake.add(Node(tailnet.lab.peers["bob"].ipv4, login, user_id, "bob-desktop"))


def test_requests_per_minute_give_429_with_retry_after(tailnet: TailnetServer) -> None:
    _as(tailnet, "rpm@example.com", 31)
    tailnet.apply_policy('[[allow]]\nlogins = ["rpm@example.com"]\nrequests_per_minute = 2\n'
                         '[[allow]]\nlogins = ["alice@example.com"]\n')
    bob = tailnet.lab.peers["bob"]
    url = tailnet.tailnet_url + "/api/tags"
    assert [tailnet.curl(bob, url).status for _ in range(2)] == [200, 200]
    limited = tailnet.curl(bob, url)
    assert limited.status == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert "2 requests per minute" in limited.json()["error"]
    # other identities are not affected
    assert tailnet.curl(tailnet.lab.peers["alice"], url).status == 200


def test_tokens_per_minute_and_max_num_ctx(tailnet: TailnetServer) -> None:
    _as(tailnet, "tpm@example.com", 32)
    tailnet.apply_policy('[[allow]]\nlogins = ["tpm@example.com"]\ntokens_per_minute = 10\n'
                         "max_num_ctx = 256\n")
    bob = tailnet.lab.peers["bob"]
    # a load-only request asking for a large context: the model loads with the cap instead
    load = ('{"model": "smollm2:135m", "messages": [], "options": {"num_ctx": 1024}}')
    assert tailnet.curl(bob, tailnet.tailnet_url + "/api/chat", "-d", load).status == 200
    loaded = tailnet.curl(None, tailnet.server.url + "/api/ps").json()["models"]
    assert [model["context_length"] for model in loaded] == [256]
    first = tailnet.ollama(bob, "chat", MODEL, "--num-predict", "2")
    assert first["status"] == 200  # its prompt alone is more than 10 tokens
    limited = tailnet.curl(bob, tailnet.tailnet_url + "/api/tags")
    assert limited.status == 429
    assert "tokens in the last minute" in limited.json()["error"]
    assert 1 <= int(limited.headers["retry-after"]) <= 60


def test_a_stream_cut_short_still_counts_towards_tokens_per_minute(
        tailnet: TailnetServer) -> None:
    _as(tailnet, "cut@example.com", 34)
    tailnet.apply_policy('[[allow]]\nlogins = ["cut@example.com"]\ntokens_per_minute = 10\n')
    bob = tailnet.lab.peers["bob"]
    stream = start_long_stream(tailnet, bob)
    stream.kill()  # the client leaves mid-answer: no final chunk, no final timings
    stream.wait(10)
    line = wait_for_audit(tailnet.server.home, route="/api/chat", identity="cut@example.com")
    assert line["tokens_in"] > 10  # the prompt was evaluated
    assert line["tokens_out"] >= 1  # and at least the token the client saw was generated
    limited = tailnet.curl(bob, tailnet.tailnet_url + "/api/tags")
    assert limited.status == 429
    assert "tokens in the last minute" in limited.json()["error"]


def test_concurrent_requests_give_429(tailnet: TailnetServer) -> None:
    _as(tailnet, "busy@example.com", 33)
    tailnet.apply_policy('[[allow]]\nlogins = ["busy@example.com"]\nconcurrent_requests = 1\n')
    bob = tailnet.lab.peers["bob"]
    first = start_long_stream(tailnet, bob)
    try:
        second = tailnet.curl(bob, tailnet.tailnet_url + "/api/tags")
        assert second.status == 429
        assert second.headers["retry-after"] == "1"
        assert "already has 1 requests running" in second.json()["error"]
    finally:
        first.kill()
        first.wait(10)
    # the slot is given back once the stream is gone
    deadline = time.monotonic() + 30
    while tailnet.curl(bob, tailnet.tailnet_url + "/api/tags").status != 200:
        assert time.monotonic() < deadline, "the concurrency slot was never released"
        time.sleep(0.2)


# --- reloading ------------------------------------------------------------------------------------


def test_sighup_with_a_broken_policy_keeps_the_old_one(tailnet: TailnetServer) -> None:
    tailnet.apply_broken_policy('[[allow]]\nlogins = ["bob@example.com"]\nadmin = "yes"\n')
    log = tailnet.server.log()
    assert re.search(r"policy not reloaded, the previous one stays in force: .*policy\.toml, "
                     r"line 3: allow\[1\]\.admin", log)
    assert tailnet.server.alive()
    assert tailnet.ollama(tailnet.lab.peers["bob"], "show", MODEL)["status"] == 403
    assert tailnet.ollama(tailnet.lab.peers["alice"], "show", MODEL)["status"] == 200


def test_sighup_does_not_cut_a_running_stream(tailnet: TailnetServer) -> None:
    alice = tailnet.lab.peers["alice"]
    stream = start_long_stream(tailnet, alice)
    try:
        assert stream.stdout is not None
        tailnet.apply_policy('[[allow]]\nlogins = ["carol@example.com"]\n')  # alice is out
        # the stream admitted before the reload goes on: still open, still sending tokens
        time.sleep(0.5)
        assert stream.poll() is None
        after = [stream.stdout.readline() for _ in range(3)]
        assert all(b'"done":false' in line for line in after), after
    finally:
        stream.kill()
        stream.wait(10)
    assert tailnet.ollama(alice, "show", MODEL)["status"] == 403


def test_userspace_networking_peers_on_loopback_are_identified(tailnet: TailnetServer) -> None:
    bob = tailnet.lab.peers["bob"]
    tailnet.fake.state.tun = False
    tailnet.fake.state.userspace_node = Node(bob.ipv4, "bob@example.com", 20, "bob-desktop")
    tailnet.apply_policy(base_policy(tailnet.server.home))  # SIGHUP also re-reads the status
    forwarded = tailnet.curl(None, tailnet.server.url + "/api/tags")
    assert forwarded.status == 403
    assert "bob@example.com" in forwarded.json()["error"]
    assert any(addr.startswith("127.0.0.1:") for addr in whois_addresses(tailnet))
    tailnet.fake.state.userspace_node = None  # tailscaled did not forward it: a local process
    assert tailnet.curl(None, tailnet.server.url + "/api/tags").status == 200


# --- tailscale serve ------------------------------------------------------------------------------


def test_tailscale_serve_through_the_unix_socket_proxy(tailnet: TailnetServer) -> None:
    alice, bob = tailnet.lab.peers["alice"], tailnet.lab.peers["bob"]
    sock = str(tailnet.server.home / "serve.sock")
    url = "http://homebox.tail1234.ts.net/api/show"
    show = ["-d", '{"model": "smollm2:135m"}']

    def through_serve(*headers: str) -> int:
        args = [item for header in headers for item in ("-H", header)]
        return tailnet.curl(None, url, "--unix-socket", sock, *args, *show).status

    before = len(audit_lines(tailnet.server.home))
    assert through_serve(f"X-Forwarded-For: {alice.ipv4}",
                         "Tailscale-User-Login: alice@example.com") == 200
    entry = wait_for_audit(tailnet.server.home, before, route="/api/show", via="proxy")
    assert entry["identity"] == "alice@example.com"
    assert entry["address"] == alice.ipv4  # the client tailscale serve forwarded
    assert through_serve(f"X-Forwarded-For: {bob.ipv4}",
                         "Tailscale-User-Login: bob@example.com") == 403
    # a login that whois of the forwarded address does not confirm
    assert through_serve(f"X-Forwarded-For: {bob.ipv4}",
                         "Tailscale-User-Login: alice@example.com") == 403
    assert through_serve("Tailscale-Funnel-Request: ?1", "X-Forwarded-For: 203.0.113.9") == 401
    assert through_serve() == 200  # a local process on the socket, nothing forwarded


def test_a_loopback_proxy_must_be_named_in_the_policy(tailnet: TailnetServer) -> None:
    alice = tailnet.lab.peers["alice"]
    url = tailnet.server.url + "/api/show"
    show = ["-d", '{"model": "smollm2:135m"}']
    forwarded = ["-H", f"X-Forwarded-For: {alice.ipv4}",
                 "-H", "Tailscale-User-Login: alice@example.com"]
    refused = tailnet.curl(None, url, *forwarded, *show)
    assert refused.status == 403
    assert '[serve] proxy = "127.0.0.1"' in refused.json()["error"]
    tailnet.apply_policy('[[allow]]\nlogins = ["alice@example.com"]\nmodels = ["llama*"]\n'
                         '[serve]\nproxy = "127.0.0.1"\n')
    before = len(audit_lines(tailnet.server.home))
    as_alice = tailnet.curl(None, url, *forwarded, *show)
    assert as_alice.status == 403  # now it is alice, and alice may only use llama*
    assert "alice@example.com may not use model" in as_alice.json()["error"]
    entry = wait_for_audit(tailnet.server.home, before, route="/api/show", via="proxy",
                           status=403, identity="alice@example.com")
    assert entry["address"] == alice.ipv4  # where she is, not the proxy's 127.0.0.1
    assert tailnet.curl(None, url, *show).status == 200


def test_a_loopback_proxy_in_userspace_mode_is_told_apart_from_forwarded_peers(
        tailnet: TailnetServer) -> None:
    """In userspace mode tailnet peers arrive from 127.0.0.1 like a loopback proxy: whois says which
    connection is a peer, and a peer is never taken for the proxy (nor for whom it names)."""
    alice, bob = tailnet.lab.peers["alice"], tailnet.lab.peers["bob"]
    tailnet.fake.state.tun = False
    tailnet.apply_policy('[[allow]]\nlogins = ["alice@example.com"]\n'
                         '[serve]\nproxy = "127.0.0.1"\n')  # SIGHUP also re-reads the status
    url = tailnet.server.url + "/api/show"
    show = ["-d", '{"model": "smollm2:135m"}']
    as_alice = ["-H", f"X-Forwarded-For: {alice.ipv4}",
                "-H", "Tailscale-User-Login: alice@example.com"]
    tailnet.fake.state.userspace_node = Node(bob.ipv4, "bob@example.com", 20, "bob-desktop")
    for headers in ([], as_alice):
        as_bob = tailnet.curl(None, url, *headers, *show)
        assert as_bob.status == 403, headers
        assert "bob@example.com" in as_bob.json()["error"]
    tailnet.fake.state.userspace_node = None  # whois knows no one here: the proxy, or a process
    assert tailnet.curl(None, url, *as_alice, *show).status == 200
    assert tailnet.curl(None, url, *show).status == 200


# --- the audit summary ----------------------------------------------------------------------------


def test_homeport_audit_summarises_who_used_what(tailnet: TailnetServer) -> None:
    alice, bob = tailnet.lab.peers["alice"], tailnet.lab.peers["bob"]
    before = len(audit_lines(tailnet.server.home))
    assert tailnet.ollama(alice, "show", MODEL)["status"] == 200
    assert tailnet.ollama(bob, "show", MODEL)["status"] == 403
    wait_for_audit(tailnet.server.home, before, identity="bob@example.com", status=403)
    env = dict(tailnet.server.env)
    table = subprocess.run([sys.executable, "-m", "homeport", "audit", "--since", "1h"],
                           env={**env, "COLUMNS": "160"}, capture_output=True, text=True,
                           timeout=60)
    assert table.returncode == 0, table.stderr
    assert "alice@example.com (alice-laptop)" in table.stdout
    assert "bob@example.com (bob-desktop)" in table.stdout
    raw = subprocess.run([sys.executable, "-m", "homeport", "audit", "--json"], env=env,
                         capture_output=True, text=True, timeout=60)
    rows: list[dict[str, Any]] = json.loads(raw.stdout)
    bob_rows = [row for row in rows if row["identity"].startswith("bob@example.com")]
    assert sum(row["denied"] for row in bob_rows) >= 1
    alice_rows = [row for row in rows if row["identity"].startswith("alice@example.com")]
    assert sum(row["requests"] for row in alice_rows) >= 1
