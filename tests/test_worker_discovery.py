"""Tailnet peers that run ``homeport worker`` become RPC workers (``serve --tailnet``).

Every part is real but the tailnet: a ``homeport worker`` on 127.0.0.1 at a free port, another at
the same port on 127.0.0.2 whose policy refuses the server (its own fake tailscaled, in userspace
networking, says bob's node made every loopback connection), and a server whose fake tailscaled
(userspace networking too, so the server listens on loopback) lists as peers "lender" at
127.0.0.1, "refuser" at 127.0.0.2, "quiet" at 127.0.0.3 where nothing listens, and "visitor",
shared in from another tailnet, also at 127.0.0.1. The worker port the server probes is set to the
workers' (HOMEPORT_WORKER_DISCOVERY_PORT), as a tailnet's workers would all be at 50052.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from homeport import config
from homeport.engine.worker_list import Worker, WorkerList, merge_workers
from homeport.mesh.worker_discovery import WorkerDiscovery, worker_candidates
from homeport.mesh.worker_probe import ProbeBackoff, looks_between
from homeport.net.localapi import LocalAPI, Status
from tests.conftest import MODEL
from tests.support.fake_tailscaled import FakeState, FakeTailscaled, Node, Peer
from tests.support.server import ServerProcess
from tests.support.waiting import wait_for
from tests.support.worker import WorkerProcess
from tests.test_cli_models import homeport
from tests.test_rpc import (
    GREEDY,
    PROMPT,
    UNITS,
    generate,
    host_bytes,
    machines,
    require_rpc,
    server_env,
)

SELF_IP = "100.80.0.1"


LISTED = ("endpoint", "peer", "discovered", "reachable")


def workers_listed(server: ServerProcess) -> list[dict[str, Any]]:
    """Each worker's entry in ``/api/homeport/nodes``, but the probes' times."""
    reply = httpx.get(f"{server.url}/api/homeport/nodes", timeout=10)
    assert reply.status_code == 200, reply.text
    workers: list[dict[str, Any]] = reply.json()["workers"]
    return [{key: worker[key] for key in LISTED} for worker in workers]


def test_configured_workers_come_first_each_once_and_at_most_ggml_s_limit() -> None:
    assert merge_workers(("10.0.0.1:50052", "box:6000"), ("100.64.0.9:50052", "10.0.0.1:50052")) \
        == ("10.0.0.1:50052", "box:6000", "100.64.0.9:50052")
    configured = [f"10.0.0.{n}:50052" for n in range(10)]
    discovered = [f"100.64.0.{n}:50052" for n in range(10)]
    merged = merge_workers(configured, discovered)
    assert len(merged) == config.MAX_RPC_WORKERS
    assert merged[:10] == tuple(configured)
    assert merged[10:] == tuple(discovered[:config.MAX_RPC_WORKERS - 10])
    workers = WorkerList(("10.0.0.1:50052",))
    assert workers() == ("10.0.0.1:50052",)
    workers.set_discovered({"100.64.0.9:50052": "desktop", "10.0.0.1:50052": "box"})
    assert workers() == ("10.0.0.1:50052", "100.64.0.9:50052")
    assert workers.listing() == [Worker("10.0.0.1:50052"), Worker("100.64.0.9:50052", "desktop")]
    workers.set_discovered({})  # the peer left
    assert workers() == ("10.0.0.1:50052",)


def test_worker_candidates_are_this_tailnet_s_online_peers_by_ipv4() -> None:
    state = FakeState(self_ips=[SELF_IP, "fd7a:115c:a1e0::1"])
    for peer in (Peer("desktop", ["fd7a:115c:a1e0::2", "100.80.0.2"]),
                 Peer("v6only", ["fd7a:115c:a1e0::3"]),
                 Peer("away", ["100.80.0.4"], online=False),
                 Peer("visitor", ["100.80.0.5"], tailnet_suffix="other-tail.ts.net"),
                 Peer("guest", ["100.80.0.6"], sharee=True),
                 Peer("mirror", [SELF_IP])):  # never this node's own address
        state.peers[peer.name] = peer
    status = Status.model_validate(state.status())
    assert worker_candidates(status) == {f"100.80.0.2:{config.WORKER_PORT}": "desktop"}
    assert worker_candidates(status, 6000) == {"100.80.0.2:6000": "desktop"}


def test_a_tailnet_peer_running_a_worker_takes_what_this_machine_cannot_hold(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    # The memory limit trick of test_rpc: only a worker makes room for the model, and the
    # server names none; it finds the worker on its tailnet.
    require_rpc()
    limit = (host_bytes(on_worker=True) + host_bytes(on_worker=False)) // 2
    home = tmp_path_factory.mktemp("worker-discovery")
    fake = FakeTailscaled(home / "tailscaled.sock")
    fake.state.tun = False  # userspace networking: the server listens on loopback only
    fake.state.self_ips = [SELF_IP]
    fake.start()
    refuser_tailscaled = FakeTailscaled(home / "refuser.sock")
    refuser_tailscaled.state.tun = False
    refuser_tailscaled.state.self_ips = ["100.80.0.2"]
    refuser_tailscaled.state.userspace_node = Node("127.0.0.1", "bob@example.com", 20, "bob-pc")
    refuser_tailscaled.start()
    policy = home / "policy.toml"
    policy.write_text("[tailnet]\nowner = true\n")
    try:
        with WorkerProcess(home / "worker") as lender, \
                WorkerProcess(home / "refuser", host="127.0.0.2", port=lender.port, env={
                    "HOMEPORT_TAILSCALED_SOCKET": str(refuser_tailscaled.socket_path),
                    "HOMEPORT_POLICY": str(policy)}) as refuser:
            for peer in (Peer("lender", ["127.0.0.1"]), Peer("refuser", ["127.0.0.2"]),
                         Peer("quiet", ["127.0.0.3"]),
                         Peer("visitor", ["127.0.0.1"], tailnet_suffix="other-tail.ts.net")):
                fake.state.peers[peer.name] = peer
            env = {**server_env(), "HOMEPORT_SCHED_SPREAD": "",
                   "HOMEPORT_MEMORY_LIMIT": str(limit),
                   "HOMEPORT_TAILSCALED_SOCKET": str(fake.socket_path),
                   "HOMEPORT_DISCOVER_PEERS": "0",  # upstreams are not this test's business
                   "HOMEPORT_PEER_DISCOVERY_INTERVAL": "500ms",
                   "HOMEPORT_WORKER_DISCOVERY_PORT": str(lender.port)}
            with ServerProcess(home / "server", env=env, args=("--tailnet",)) as server:
                found = f"tailnet peer lender runs a worker at {lender.endpoint}"
                assert wait_for(lambda: found in server.log()), server.log()[-3000:]
                assert (f"tailnet peers accepting connections on port {lender.port} become RPC "
                        "workers") in server.log()
                # The refuser's gate closed the probes at once: it is not taken.
                assert wait_for(lambda: "refused a connection from bob-pc" in refuser.log())
                for name in ("refuser", "quiet", "visitor"):
                    assert name not in server.log()
                assert workers_listed(server) == [{"endpoint": lender.endpoint, "peer": "lender",
                                                   "discovered": True, "reachable": True}]
                shown = homeport("nodes", endpoint=server.url)
                assert shown.returncode == 0, shown.stderr
                assert f"RPC workers: {lender.endpoint} (lender, found on the tailnet)" \
                    in shown.stdout
                accepted = lender.accepted()

                assert generate(server.url, GREEDY)["response"].strip()
                assert machines(server.url)[1] == [("local", 0), (lender.endpoint, UNITS)]
                assert re.search(rf"placing {re.escape(MODEL)}: .*RPC0 on "
                                 rf"{re.escape(lender.endpoint)} {UNITS} layers", server.log())
                assert lender.accepted() > accepted  # the probes never reached ggml; the load did

                # The peer leaves the tailnet: the next load goes without it, and cannot fit.
                fake.state.peers["lender"].online = False
                gone = f"tailnet worker lender at {lender.endpoint} is gone"
                assert wait_for(lambda: gone in server.log()), server.log()[-3000:]
                assert workers_listed(server) == []
                unload = httpx.post(f"{server.url}/api/generate",
                                    json={"model": MODEL, "keep_alive": 0}, timeout=60)
                assert unload.status_code == 200, unload.text
                assert wait_for(lambda: not httpx.get(f"{server.url}/api/ps").json()["models"])
                reply = httpx.post(f"{server.url}/api/generate", json={
                    "model": MODEL, "prompt": PROMPT, "stream": False, "options": GREEDY},
                    timeout=600)
                assert reply.status_code == 400, reply.text
                assert "of host memory" in reply.json()["error"]
                assert server.alive()
            assert refuser.accepted() == 0
    finally:
        fake.stop()
        refuser_tailscaled.stop()


def test_configured_workers_are_shown_and_discovery_can_be_turned_off(tmp_path: Path) -> None:
    fake = FakeTailscaled(tmp_path / "tailscaled.sock")
    fake.state.tun, fake.state.self_ips = False, [SELF_IP]
    fake.start()
    try:
        env = {"HOMEPORT_TAILSCALED_SOCKET": str(fake.socket_path),
               "HOMEPORT_RPC_WORKERS": "127.0.0.9:50052",
               "HOMEPORT_DISCOVER_WORKERS": "false", "HOMEPORT_DISCOVER_PEERS": "false"}
        with ServerProcess(tmp_path / "server", env=env, args=("--tailnet",)) as server:
            assert "RPC workers: 127.0.0.9:50052 (configured)" in server.log()
            assert "become RPC workers" not in server.log()
            # Nothing listens there: the server's probe at startup finds it not accepting.
            assert wait_for(lambda: workers_listed(server) == [
                {"endpoint": "127.0.0.9:50052", "peer": None, "discovered": False,
                 "reachable": False}]), workers_listed(server)
            shown = homeport("nodes", endpoint=server.url)
            assert "RPC workers: 127.0.0.9:50052 (configured)" in shown.stdout
            assert "no upstreams" in shown.stderr
    finally:
        fake.stop()


class _Desktop:
    """A fake tailscaled listing one online peer, "desktop", at 127.0.0.1, whose worker port
    counts each connection and holds it open, as a gate that admits this node does, or closes it
    at once, as one that refuses it does; and the discoveries made over it, closed with it."""

    def __init__(self, home: Path, admitting: bool = True) -> None:
        self.admitting = admitting
        self.connections = 0
        self.port = 0
        self.fake = FakeTailscaled(home / "tailscaled.sock")
        self.fake.state.self_ips = [SELF_IP]
        self.fake.state.peers["desktop"] = Peer("desktop", ["127.0.0.1"])
        self._held: list[asyncio.StreamWriter] = []
        self._listener: asyncio.Server | None = None
        self._discoveries: list[WorkerDiscovery] = []

    async def _gate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.admitting:
            self._held.append(writer)
        else:
            writer.close()

    def discovery(self, workers: WorkerList, interval: float) -> WorkerDiscovery:
        discovery = WorkerDiscovery(LocalAPI(self.fake.socket_path), workers, interval,
                                    port=self.port, settle=0.2)
        self._discoveries.append(discovery)
        return discovery

    async def __aenter__(self) -> _Desktop:
        self._listener = await asyncio.start_server(self._gate, "127.0.0.1", 0)
        self.port = int(self._listener.sockets[0].getsockname()[1])
        self.fake.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for discovery in self._discoveries:
            await discovery.localapi.aclose()
        self.fake.stop()
        for writer in self._held:
            writer.close()
        if self._listener is not None:
            self._listener.close()


def _discovered_beside(configured: tuple[str, ...], home: Path) -> tuple[tuple[str, ...], int]:
    """What one look finds when this machine's tailnet lists one peer at 127.0.0.1 whose worker
    port admits this node; and that port."""
    async def look() -> tuple[tuple[str, ...], int]:
        home.mkdir()
        async with _Desktop(home) as desktop:
            workers = WorkerList(tuple(endpoint.format(port=desktop.port)
                                       for endpoint in configured))
            await desktop.discovery(workers, 60).discover()
            return workers(), desktop.port

    return asyncio.run(look())


def test_a_configured_worker_is_not_found_again_by_its_address(tmp_path: Path) -> None:
    found, port = _discovered_beside((), tmp_path / "alone")
    assert found == (f"127.0.0.1:{port}",)
    # Configured by name, the same worker is one worker, not two.
    found, port = _discovered_beside(("localhost:{port}",), tmp_path / "named")
    assert found == (f"localhost:{port}",)


def test_a_peer_that_does_not_accept_is_probed_after_1_2_4_looks_at_most_10_minutes_apart() -> None:
    assert [looks_between(failures, 30) for failures in range(8)] == [1, 1, 2, 4, 8, 16, 20, 20]
    assert [30 * looks_between(failures, 30) for failures in range(1, 8)] == \
        [30, 60, 120, 240, 480, 600, 600]
    assert looks_between(30, 0.5) == 1200  # 10 minutes of half-second looks
    assert looks_between(5, 3600) == 1  # looks rarer than the cap: every look
    assert looks_between(10_000, 30) == 20

    backoff = ProbeBackoff(30)
    probed = []
    for look in range(80):
        if backoff.due("quiet"):
            probed.append(look)
            backoff.record("quiet", False)
    assert probed == [0, 1, 3, 7, 15, 31, 51, 71]
    assert backoff.failures("quiet") == 8
    # It went offline (discovery keeps only the online peers): back, it is probed at once.
    backoff.keep(set())
    assert backoff.failures("quiet") == 0
    assert backoff.due("quiet")
    # One that accepts is probed at every look, and failing again starts from the beginning.
    for _ in range(5):
        backoff.record("quiet", False)
    assert backoff.failures("quiet") == 5
    while not backoff.due("quiet"):
        pass
    backoff.record("quiet", True)
    assert all(backoff.due("quiet") for _ in range(3))
    backoff.record("quiet", False)
    assert backoff.due("quiet")


def test_discovery_backs_off_a_refusing_peer_and_finds_it_once_it_admits(tmp_path: Path) -> None:
    """One peer whose worker port closes each connection at once, as a gate that refuses this node
    does, then holds them open, as one that admits it: each look is one ``discover()``."""
    async def looks() -> None:
        async with _Desktop(tmp_path, admitting=False) as desktop:
            workers = WorkerList()
            interval = 60.0  # at most 10 looks apart
            discovery = desktop.discovery(workers, interval)
            endpoint = f"127.0.0.1:{desktop.port}"
            for _ in range(8):
                await discovery.discover()
            assert desktop.connections == 4  # looks 0, 1, 3 and 7
            assert workers() == ()
            # Offline, it is not probed; back online, it is probed at the next look.
            desktop.fake.state.peers["desktop"].online = False
            await discovery.discover()
            assert desktop.connections == 4
            desktop.fake.state.peers["desktop"].online = True
            await discovery.discover()
            assert desktop.connections == 5
            for _ in range(7):  # looks 1 to 7: probed at 1, 3 and 7, the next at 15
                await discovery.discover()
            assert desktop.connections == 8
            assert discovery.backoff.failures(endpoint) == 4
            # The worker starts admitting this node: found within the schedule's looks.
            desktop.admitting = True
            taken = 0
            while not workers():
                await discovery.discover()
                taken += 1
                assert taken <= looks_between(4, interval)
            assert taken == looks_between(4, interval)
            assert workers.listing()[0].peer == "desktop"
            seen = workers.seen(endpoint)
            assert seen is not None
            assert seen.accepting
            # Found, it is probed at every look.
            await discovery.discover()
            assert desktop.connections == 10

    asyncio.run(looks())
