"""The mesh's forwarded identity: ``X-Homeport-Forwarded-For`` on a fake tailnet.

A forwarding homeport node names the caller it admitted in that header. The upstream here is a real
``homeport serve --tailnet`` whose fake tailscaled knows three peers, each in its own network
namespace: "alice" (allowed smollm2*), "gateway" (a homeport node, named in ``[tailnet]
forwarders``; its owner bob is allowed every model) and "mallory" (allowed nothing). Each peer sends
the header itself with curl, exactly as a forwarding node would, so whether the upstream believes
it depends only on who sent it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MODEL
from tests.support.fake_tailscaled import FakeTailscaled, Node
from tests.support.netns import Lab, Peer
from tests.support.server import ServerProcess
from tests.support.tailnet import Reply, TailnetServer, audit_lines, tailnet_lab, wait_for_audit

FORWARDED_FOR = "X-Homeport-Forwarded-For"
POLICY = """
[tailnet]
owner = true
forwarders = ["gateway", "tag:homeport-node"]

[[allow]]
logins = ["alice@example.com"]
models = ["smollm2*"]

[[allow]]
logins = ["bob@example.com"]
"""
CHAT = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}],
                   "stream": False, "options": {"num_predict": 4, "temperature": 0}})


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with tailnet_lab("alice", "gateway", "mallory") as lab:
        yield lab


def default_nodes(lab: Lab) -> list[Node]:
    return [Node(lab.peers["alice"].ipv4, "alice@example.com", 10, "alice-laptop"),
            Node(lab.peers["gateway"].ipv4, "bob@example.com", 20, "gateway"),
            Node(lab.peers["mallory"].ipv4, "mallory@example.com", 30, "mallory-pc")]


@pytest.fixture(scope="module")
def tailnet(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TailnetServer]:
    home = tmp_path_factory.mktemp("mesh-trust")
    fake = FakeTailscaled(home / "tailscaled.sock")
    fake.state.self_ips = [lab.server_ipv4, lab.server_ipv6]
    for node in default_nodes(lab):
        fake.add(node)
    fake.start()
    policy_path = home / "policy.toml"
    policy_path.write_text(POLICY)
    server = ServerProcess(home, env={
        "HOMEPORT_TAILSCALED_SOCKET": str(fake.socket_path),
        "HOMEPORT_POLICY": str(policy_path),
        "HOMEPORT_CONTEXT_LENGTH": "1024",
    }, args=("--tailnet",))
    try:
        server.start()
        yield TailnetServer(server, fake, lab, policy_path)
    finally:
        server.stop()
        fake.stop()


@pytest.fixture(autouse=True)
def default_whois(tailnet: TailnetServer) -> Iterator[None]:
    yield
    assert tailnet.fake is not None
    tailnet.fake.state.nodes.clear()
    for node in default_nodes(tailnet.lab):
        tailnet.fake.add(node)


def chat(tailnet: TailnetServer, peer: Peer, forwarded_for: str | None) -> Reply:
    header = ["-H", f"{FORWARDED_FOR}: {forwarded_for}"] if forwarded_for is not None else []
    return tailnet.curl(peer, tailnet.tailnet_url + "/api/chat", *header, "-d", CHAT)


def audit_for(home: Path, identity: str) -> list[dict[str, object]]:
    return [line for line in audit_lines(home) if line.get("identity") == identity]


# --- 1. from a peer the policy does not name, the header is ignored -------------------------------


def test_a_peer_not_named_as_forwarder_is_judged_as_itself(tailnet: TailnetServer) -> None:
    alice = tailnet.lab.peers["alice"]
    # "someone-else" is allowed nothing; alice is allowed smollm2*: the answer is alice's
    reply = chat(tailnet, alice, "someone-else@example.com")
    assert reply.status == 200, reply.body
    assert reply.json()["done"] is True
    line = wait_for_audit(tailnet.server.home, route="/api/chat", identity="alice@example.com",
                          status=200)
    assert line["via"] == "tailnet"
    assert line["node"] == "alice-laptop"
    assert audit_for(tailnet.server.home, "someone-else@example.com") == []


def test_a_peer_not_named_as_forwarder_cannot_borrow_an_allowed_login(
        tailnet: TailnetServer) -> None:
    mallory = tailnet.lab.peers["mallory"]
    # mallory names alice, who is allowed the model: still refused, as mallory
    reply = chat(tailnet, mallory, "alice@example.com")
    assert reply.status == 403
    error = reply.json()["error"]
    assert "mallory@example.com" in error
    assert 'logins = ["mallory@example.com"]' in error
    line = wait_for_audit(tailnet.server.home, route="/api/chat",
                          identity="mallory@example.com", status=403)
    assert line["via"] == "tailnet"


# --- 2. a named forwarder's caller gets only what an [[allow]] rule gives it ----------------------


def test_a_forwarded_caller_outside_the_allow_rules_gets_403_with_the_line_to_add(
        tailnet: TailnetServer) -> None:
    gateway = tailnet.lab.peers["gateway"]
    # the gateway's own login (bob) may use every model; the caller it names may not
    assert chat(tailnet, gateway, None).status == 200
    reply = chat(tailnet, gateway, "carol@example.com")
    assert reply.status == 403
    error = reply.json()["error"]
    assert "carol@example.com (forwarded by node gateway)" in error
    assert 'add logins = ["carol@example.com"] to an [[allow]] rule' in error
    line = wait_for_audit(tailnet.server.home, route="/api/chat", identity="carol@example.com",
                          status=403)
    assert line["via"] == "forwarded"
    assert line["node"] == "gateway"


def test_the_owner_named_by_a_forwarder_has_no_owner_rights(tailnet: TailnetServer) -> None:
    """The owner check needs whois of the caller; a forwarded name is only a name."""
    gateway = tailnet.lab.peers["gateway"]
    reply = chat(tailnet, gateway, "owner@example.com")
    assert reply.status == 403
    assert 'logins = ["owner@example.com"]' in reply.json()["error"]


def test_a_forwarded_caller_gets_only_its_rules_models(tailnet: TailnetServer) -> None:
    tailnet.apply_policy(POLICY.replace('models = ["smollm2*"]', 'models = ["llama3*"]'))
    try:
        reply = chat(tailnet, tailnet.lab.peers["gateway"], "alice@example.com")
        assert reply.status == 403
        assert "alice@example.com may not use model" in reply.json()["error"]
    finally:
        tailnet.apply_policy(POLICY)


# --- 3. a named forwarder's allowed caller is served, and audited as itself ---------------------


def test_a_forwarded_allowed_caller_is_served_and_audited_as_itself(
        tailnet: TailnetServer) -> None:
    gateway = tailnet.lab.peers["gateway"]
    before = len(audit_lines(tailnet.server.home))
    reply = chat(tailnet, gateway, "alice@example.com")
    assert reply.status == 200, reply.body
    answer = reply.json()
    assert answer["done"] is True
    assert 0 < answer["eval_count"] <= 4
    line = wait_for_audit(tailnet.server.home, before, route="/api/chat",
                          identity="alice@example.com", via="forwarded")
    assert line["status"] == 200
    assert line["node"] == "gateway"
    assert line["model"] == MODEL
    assert 0 < line["tokens_out"] <= 4


def test_a_forwarder_named_by_tag_is_believed(tailnet: TailnetServer) -> None:
    gateway = tailnet.lab.peers["gateway"]
    assert tailnet.fake is not None
    # a tagged node is known by its tags alone: its name no longer makes it a forwarder
    tailnet.fake.add(Node(gateway.ipv4, "bob@example.com", 20, "gateway", tags=["tag:ci"]))
    ignored = chat(tailnet, gateway, "alice@example.com")
    assert ignored.status == 403
    assert 'tags = ["tag:ci"]' in ignored.json()["error"]
    tailnet.fake.add(Node(gateway.ipv4, "bob@example.com", 20, "other-name",
                          tags=["tag:homeport-node"]))
    before = len(audit_lines(tailnet.server.home))
    believed = chat(tailnet, gateway, "alice@example.com")
    assert believed.status == 200, believed.body
    line = wait_for_audit(tailnet.server.home, before, route="/api/chat",
                          identity="alice@example.com", via="forwarded", node="other-name")
    assert line["status"] == 200
