"""The worker's gate on a fake tailnet: a worker on this machine's "tailnet" address (the lab's bridge,
which the fake tailscaled reports as ours), peers in network namespaces. alice is allowed by the
worker's policy, bob is on the tailnet but not allowed, the stranger is not on the tailnet at all.
A refused peer's connection is closed before any byte reaches ggml's RPC server (which prints each
connection it accepts); alice's real ggml client gets through and lists the worker's device.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from homeport.engine import rpc
from homeport.net import keepalive
from homeport.worker.refusals import RefusalLog
from tests.conftest import MODEL
from tests.support.fake_tailscaled import FakeTailscaled, Node
from tests.support.netns import Lab, Peer
from tests.support.server import PROJECT_SRC, ServerProcess
from tests.support.tailnet import tailnet_lab
from tests.support.waiting import wait_for
from tests.support.worker import WorkerProcess

POLICY = """
[tailnet]
owner = true

[[allow]]
logins = ["alice@example.com"]
"""

# A ggml RPC client's first message, HELLO (command 14, an 8-byte size, 24 bytes of connection
# capabilities), then the end of what it sends, and a read: what the peer gets back before the
# connection closes, as hex ("" when nothing). ggml answers HELLO with its size (28) and version.
PROBE = """
import socket, struct, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
received = b""
try:
    sock.sendall(bytes([14]) + struct.pack("<Q", 24) + bytes(24))
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # already reset: the read below says so
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
except (ConnectionResetError, BrokenPipeError):
    pass  # closed with our bytes unread: the kernel resets rather than ends the connection
except OSError as exc:
    print("error", type(exc).__name__)
    sys.exit()
print("closed", received.hex())
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with tailnet_lab("alice", "bob", lan_stranger=True) as lab:
        yield lab


@pytest.fixture(scope="module")
def worker(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    assert rpc.available(), "llama.cpp was built without RPC: `./dev setup` rebuilds it"
    home = tmp_path_factory.mktemp("gate")
    fake = FakeTailscaled(home / "tailscaled.sock")
    fake.state.self_ips = [lab.server_ipv4, lab.server_ipv6]
    fake.add(Node(lab.peers["alice"].ipv4, "alice@example.com", 10, "alice-laptop"))
    fake.add(Node(lab.peers["bob"].ipv4, "bob@example.com", 20, "bob-desktop"))
    fake.start()
    policy = home / "policy.toml"
    policy.write_text(POLICY)
    env = {"HOMEPORT_TAILSCALED_SOCKET": str(fake.socket_path), "HOMEPORT_POLICY": str(policy)}
    try:
        # No --listen host given but the tailnet's: the default would pick it too (port aside).
        with WorkerProcess(home, host=lab.server_ipv4, env=env) as process:
            yield process
    finally:
        fake.stop()


def probe(lab: Lab, peer: Peer, worker: WorkerProcess) -> str:
    result = lab.run(peer, [sys.executable, "-c", PROBE, worker.host, str(worker.port)],
                     timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize(("name", "reason"), [
    ("bob", "refused a connection from bob-desktop (bob@example.com): bob@example.com "
            "(node bob-desktop) may not use this server"),
    ("stranger", "it is not on this tailnet"),
])
def test_a_peer_the_policy_does_not_allow_is_closed_before_any_rpc_byte(
        lab: Lab, worker: WorkerProcess, name: str, reason: str) -> None:
    before = worker.accepted()
    # Closed with nothing sent back: not even ggml's HELLO reply.
    assert probe(lab, lab.peers[name], worker) == "closed"
    assert wait_for(lambda: reason in worker.log(), timeout=30), worker.log()[-2000:]
    assert worker.accepted() == before  # ggml's server never saw the connection


def test_an_allowed_peer_reaches_ggml_and_lists_the_worker_s_device(
        lab: Lab, worker: WorkerProcess) -> None:
    before = worker.accepted()
    env = {"PYTHONPATH": str(PROJECT_SRC), "GGML_NO_BACKTRACE": "1"}
    result = lab.run(lab.peers["alice"], [sys.executable, "-m", "homeport.engine.devices",
                                          "--workers", worker.endpoint], timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    devices = json.loads(result.stdout)
    remote = [device for device in devices if device["endpoint"] == worker.endpoint]
    assert len(remote) == 1
    assert remote[0]["name"] == "RPC0"
    assert remote[0]["total"] > 0
    assert worker.accepted() > before
    assert "serving alice-laptop (alice@example.com)" in worker.log()


def test_a_reloaded_policy_lets_bob_through_to_ggml(lab: Lab, worker: WorkerProcess) -> None:
    policy = Path(worker.env["HOMEPORT_POLICY"])
    assert worker.process is not None
    try:
        policy.write_text(POLICY.replace('"alice@example.com"', '"alice@example.com", '
                                                               '"bob@example.com"'))
        worker.process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "policy reloaded" in worker.log(), timeout=30), worker.log()
        # ggml's HELLO answer: 28 bytes follow, protocol 7.0.0.
        assert probe(lab, lab.peers["bob"], worker).startswith(
            "closed 1c00000000000000" + f"{rpc.PROTOCOL_MAJOR:02x}0000")
        assert "serving bob-desktop (bob@example.com)" in worker.log()
    finally:
        policy.write_text(POLICY)
        worker.process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: worker.log().count("policy reloaded") == 2, timeout=30)


def test_the_worker_log_names_its_audience(worker: WorkerProcess, tmp_path: Path) -> None:
    assert f"worker listening on {worker.endpoint}: reachable by nodes of your tailnet the " \
           "policy allows" in worker.log()


# Connects, sends HELLO's command byte (ggml then waits for the rest, holding a slot), says so and
# sleeps: a server whose machine is about to vanish.
HOLD = """
import socket, sys, time
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
sock.sendall(bytes([14]))
print("holding", flush=True)
time.sleep(600)
"""


def test_a_server_that_vanishes_frees_its_slot(lab: Lab, worker: WorkerProcess) -> None:
    # The link is cut under a held connection: nothing reaches the gate, and only its
    # keepalive probes going unanswered let the connection, and the slot, go.
    alice = lab.peers["alice"]
    served = "alice-laptop (alice@example.com) disconnected"
    before, serving = worker.log().count(served), worker.log().count("serving alice-laptop")
    holder = subprocess.Popen(["ip", "netns", "exec", alice.namespace, sys.executable, "-c", HOLD,
                               worker.host, str(worker.port)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        assert wait_for(lambda: worker.log().count("serving alice-laptop") > serving,
                        timeout=30)
        lab.set_link(alice, up=False)
        bound = max(keepalive.KEEPIDLE + keepalive.KEEPCNT * keepalive.KEEPINTVL,
                    keepalive.USER_TIMEOUT_MS / 1000) + 30
        assert wait_for(lambda: worker.log().count(served) > before, timeout=bound), \
            worker.log()[-2000:]
    finally:
        holder.kill()
        holder.wait()
        lab.set_link(alice, up=True)


def test_a_worker_that_refuses_the_server_is_left_out_of_placement(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    # Userspace networking: tailscaled hands tailnet peers over from 127.0.0.1, so a worker on
    # loopback asks whois about each connection, and this tailscaled says bob's node made it.
    # The server's look at that worker's devices fails its handshake (ggml's abort names no
    # worker), so each worker is asked alone: the model goes to the other one and here.
    home = tmp_path_factory.mktemp("refused")
    fake = FakeTailscaled(home / "tailscaled.sock")
    fake.state.self_ips = ["100.80.250.1"]
    fake.state.tun = False
    fake.state.userspace_node = Node("127.0.0.1", "bob@example.com", 20, "bob-desktop")
    fake.start()
    policy = home / "policy.toml"
    policy.write_text(POLICY)
    env = {"HOMEPORT_TAILSCALED_SOCKET": str(fake.socket_path), "HOMEPORT_POLICY": str(policy)}
    try:
        with WorkerProcess(home / "good") as good, \
                WorkerProcess(home / "refusing", env=env) as refusing:
            server_env = {"HOMEPORT_RPC_WORKERS": f"{refusing.endpoint},{good.endpoint}",
                          "HOMEPORT_CONTEXT_LENGTH": "1024", "HOMEPORT_SCHED_SPREAD": "1"}
            with ServerProcess(home / "server", env=server_env) as server:
                reply = httpx.post(f"{server.url}/api/generate", json={
                    "model": MODEL, "prompt": "Hi", "stream": False,
                    "options": {"num_predict": 4, "num_gpu": 20}}, timeout=600)
                assert reply.status_code == 200, reply.text
                assert re.search(rf"RPC worker {re.escape(refusing.endpoint)} failed \(.+\): "
                                 "placing without it", server.log()), server.log()[-3000:]
                running = httpx.get(f"{server.url}/api/ps", timeout=30).json()["models"]
                shares = [(share["machine"], share["layers"])
                          for share in running[0]["homeport"]["machines"]]
                assert shares == [("local", 11), (good.endpoint, 20)]
            assert "refused a connection from bob-desktop" in refusing.log()
            assert refusing.accepted() == 0
    finally:
        fake.stop()


def closed_unserved(sock: socket.socket) -> bool:
    """Whether the other end closed ``sock`` without sending a byte (a reset counts)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_one_peer_holds_at_most_its_share_of_the_gate(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    # Each connection's first byte is HELLO's command, so ggml waits for the rest and holds it.
    hello = bytes([14])
    home = tmp_path_factory.mktemp("per-peer")
    with WorkerProcess(home, slots=2, extra_args=["--max-connections-per-peer", "2"]) as worker:
        address = (worker.host, worker.port)
        with contextlib.ExitStack() as held:
            for _ in range(2):
                sock = held.enter_context(socket.create_connection(address, timeout=30))
                sock.sendall(hello)
            assert wait_for(lambda: worker.accepted() == 2, timeout=30), worker.log()
            with socket.create_connection(address, timeout=30) as extra:
                extra.sendall(hello)
                assert closed_unserved(extra)
            assert "refused a connection from this machine: it holds 2 already, the most one " \
                   "peer may (--max-connections-per-peer)" in worker.log()
            assert worker.accepted() == 2  # ggml never saw the third
        # Those two closed (the gate says so once it has let them go): the peer's next
        # connection gets through again.
        assert wait_for(lambda: worker.log().count("this machine disconnected") == 2,
                        timeout=30), worker.log()
        with socket.create_connection(address, timeout=30) as again:
            again.sendall(hello)
            assert wait_for(lambda: worker.accepted() == 3, timeout=30), worker.log()


def test_a_peer_refused_again_is_logged_once_per_interval_with_the_count_unsaid() -> None:
    refusals = RefusalLog(interval=600, most=2)
    reason = "bob@example.com (node bob-desktop) may not use this server"
    assert refusals.note("bob-desktop", reason, now=0) == 0  # the first: logged
    assert [refusals.note("bob-desktop", reason, now=t) for t in (30, 90, 599)] == [None] * 3
    assert refusals.note("bob-desktop", reason, now=600) == 3  # and 3 more since
    assert refusals.note("bob-desktop", reason, now=601) is None
    # Another reason, or another peer, is a line of its own.
    assert refusals.note("bob-desktop", "it is not on this tailnet", now=602) == 0
    assert refusals.note("100.64.0.7", "it is not on this tailnet", now=603) == 0
    # At most 2 remembered: the oldest (bob's first reason) was forgotten, so logged again.
    assert refusals.note("bob-desktop", reason, now=604) == 0
