"""Tailnet peers found through tailscaled's status become upstreams (``serve --tailnet``).

Each machine is a real process: a homeport node with the bundled model in the "desktop" network
namespace, listening on its tailnet addresses at port 11434 as a real one would; nothing at all in
"quiet"; and on this host a gateway (``--tailnet --no-engine``, no upstreams configured) whose fake
tailscaled lists as peers: desktop (online), quiet (online, nothing answers), an offline node, and
desktop again under its IPv6 address but shared in from another tailnet. Only desktop may become an
upstream.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from tests.conftest import MODEL
from tests.support.fake_tailscaled import FakeTailscaled, Node, Peer
from tests.support.netns import Lab
from tests.support.server import ServerProcess
from tests.support.tailnet import tailnet_lab
from tests.support.waiting import wait_for

PEER_PORT = 11434
OWNER = "owner@example.com"


@dataclass
class Tailnet:
    lab: Lab
    gateway: ServerProcess
    gateway_tailscaled: FakeTailscaled
    desktop: ServerProcess

    def nodes(self) -> dict[str, dict[str, Any]]:
        found = httpx.get(f"{self.gateway.url}/api/homeport/nodes", timeout=10).json()["nodes"]
        return {node["name"]: node for node in found}


def _fake(path: Path, self_ips: list[str], callers: list[str]) -> FakeTailscaled:
    """A fake tailscaled for one machine that knows ``callers`` as its owner's devices."""
    fake = FakeTailscaled(path)
    fake.state.self_ips = self_ips
    for index, ip in enumerate(callers):
        fake.add(Node(ip, OWNER, 1, f"owner-device-{index}"))  # user 1: the owner
    return fake.start()


@pytest.fixture(scope="module")
def tailnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tailnet]:
    root = tmp_path_factory.mktemp("mesh-discovery")
    with tailnet_lab("desktop", "quiet") as lab:
        desktop_peer, quiet_peer = lab.peers["desktop"], lab.peers["quiet"]
        desktop_tailscaled = _fake(root / "desktop.sock", [desktop_peer.ipv4, desktop_peer.ipv6],
                                   [lab.server_ipv4, lab.server_ipv6])
        gateway_tailscaled = _fake(root / "gateway.sock", [lab.server_ipv4, lab.server_ipv6], [])
        for peer in (Peer("desktop", [desktop_peer.ipv4, desktop_peer.ipv6]),
                     Peer("quiet", [quiet_peer.ipv4]),
                     Peer("away", [f"100.80.{lab.subnet}.99"], online=False),
                     Peer("visitor", [desktop_peer.ipv6], tailnet_suffix="other-tail.ts.net")):
            gateway_tailscaled.state.peers[peer.name] = peer
        desktop = ServerProcess(
            root / "desktop", port=PEER_PORT, host=desktop_peer.ipv4, args=("--tailnet",),
            env={"HOMEPORT_TAILSCALED_SOCKET": str(desktop_tailscaled.socket_path),
                 "HOMEPORT_CONTEXT_LENGTH": "1024"},
            wrapper=("ip", "netns", "exec", desktop_peer.namespace))
        gateway = ServerProcess(
            root / "gateway", args=("--tailnet", "--no-engine"),
            env={"HOMEPORT_TAILSCALED_SOCKET": str(gateway_tailscaled.socket_path),
                 "HOMEPORT_PEER_DISCOVERY_INTERVAL": "1s",
                 "HOMEPORT_UPSTREAM_REFRESH": "500ms"})
        try:
            desktop.start()
            gateway.start()
            yield Tailnet(lab, gateway, gateway_tailscaled, desktop)
        finally:
            gateway.stop()
            desktop.stop()
            gateway_tailscaled.stop()
            desktop_tailscaled.stop()


def test_the_online_peer_answering_on_11434_becomes_an_upstream(tailnet: Tailnet) -> None:
    assert wait_for(lambda: tailnet.nodes().get("desktop", {}).get("state") == "up"), \
        tailnet.nodes()
    desktop = tailnet.nodes()["desktop"]
    assert desktop["url"] == f"http://{tailnet.lab.peers['desktop'].ipv4}:{PEER_PORT}"
    assert desktop["kind"] == "homeport"
    assert desktop["discovered"] is True
    # quiet answers nothing, away is offline, visitor is another tailnet's (though it answers:
    # it is desktop's IPv6 address)
    visitor = tailnet.gateway_tailscaled.state.peers["visitor"].ips[0]
    assert httpx.get(f"http://[{visitor}]:{PEER_PORT}/api/version", timeout=10).status_code == 200
    assert set(tailnet.nodes()) == {"desktop"}


def test_the_gateway_lists_and_serves_the_peers_model(tailnet: Tailnet) -> None:
    assert wait_for(lambda: tailnet.nodes().get("desktop", {}).get("state") == "up")
    tags = httpx.get(f"{tailnet.gateway.url}/api/tags", timeout=10).json()["models"]
    assert [(model["name"], model["homeport"]["nodes"]) for model in tags] == [
        (MODEL, ["desktop"])]
    answer = ollama.Client(host=tailnet.gateway.url).chat(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}],
        options={"temperature": 0, "seed": 42, "num_predict": 4})
    assert answer.done
    assert answer.message.content


def test_a_peer_that_goes_offline_is_dropped(tailnet: Tailnet) -> None:
    assert wait_for(lambda: "desktop" in tailnet.nodes())
    tailnet.gateway_tailscaled.state.peers["desktop"].online = False
    try:
        assert wait_for(lambda: "desktop" not in tailnet.nodes()), tailnet.nodes()
        assert httpx.get(f"{tailnet.gateway.url}/api/tags", timeout=10).json()["models"] == []
    finally:
        tailnet.gateway_tailscaled.state.peers["desktop"].online = True
    assert wait_for(lambda: tailnet.nodes().get("desktop", {}).get("state") == "up")
