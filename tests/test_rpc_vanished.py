"""A worker that vanishes without closing its connections (switched off, cable pulled): the worker
runs in a network namespace, on a "tailnet" address the fake tailscaled reports as its own, and its
link is cut with its connections open. Nothing tells the server's runner: no FIN, no reset, every
packet lost. TCP keepalive and a send timeout on the runner's connections (``net.keepalive``) end
it within seconds, so an idle model leaves /api/ps and a stream in flight ends with an error
record, while the server stays up.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from homeport.engine import rpc
from homeport.net import keepalive
from tests.conftest import MODEL
from tests.support.fake_tailscaled import FakeTailscaled, Node
from tests.support.netns import Lab, Peer
from tests.support.server import ServerProcess
from tests.support.tailnet import tailnet_lab
from tests.support.waiting import wait_for
from tests.support.worker import WorkerProcess
from tests.test_rpc import SPLIT, generate, machines, server_env

POLICY = """
[[allow]]
logins = ["home@example.com"]
"""
# An idle connection is dropped after KEEPIDLE + KEEPCNT * KEEPINTVL, or USER_TIMEOUT_MS where
# Linux lets that decide, one with data in flight after USER_TIMEOUT_MS; the watch looks every
# second, and a busy machine adds its delays.
DETECTION = max(keepalive.KEEPIDLE + keepalive.KEEPCNT * keepalive.KEEPINTVL,
                keepalive.USER_TIMEOUT_MS / 1000)
BOUND = DETECTION + 45


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with tailnet_lab("lender") as lab:
        yield lab


@pytest.fixture(scope="module")
def lender(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """A worker in the lender's namespace that admits the server (the bridge's address)."""
    assert rpc.available(), "llama.cpp was built without RPC: `./dev setup` rebuilds it"
    peer = lab.peers["lender"]
    home = tmp_path_factory.mktemp("lender")
    fake = FakeTailscaled(home / "tailscaled.sock")
    fake.state.self_ips = [peer.ipv4]
    fake.add(Node(lab.server_ipv4, "home@example.com", 30, "home-server"))
    fake.start()
    policy = home / "policy.toml"
    policy.write_text(POLICY)
    env = {"HOMEPORT_TAILSCALED_SOCKET": str(fake.socket_path), "HOMEPORT_POLICY": str(policy)}
    try:
        with WorkerProcess(home, host=peer.ipv4, env=env, slots=4,
                           wrapper=["ip", "netns", "exec", peer.namespace]) as process:
            yield process
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def server(lender: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("server"), env=server_env(lender)) as process:
        yield process


@pytest.fixture
def link(lab: Lab) -> Iterator[Peer]:
    """The lender's link, up again after each test."""
    peer = lab.peers["lender"]
    yield peer
    lab.set_link(peer, up=True)


def accepts(lender: WorkerProcess) -> bool:
    """Whether the lender's gate takes a connection from here (it forwards nothing before the
    first byte, so this costs it nothing)."""
    try:
        socket.create_connection((lender.host, lender.port), timeout=2).close()
    except OSError:
        return False
    return True


def load_on(server: ServerProcess, lender: WorkerProcess) -> None:
    # A link just set up again may not pass packets at once; a load before it does goes without
    # the worker.
    assert wait_for(lambda: accepts(lender), timeout=30)
    assert generate(server.url, SPLIT)["response"].strip()
    shares = dict(machines(server.url)[1])
    assert shares.get(lender.endpoint, 0) > 0, shares


def test_an_idle_model_on_a_vanished_worker_leaves_within_a_bounded_wait(
        lab: Lab, lender: WorkerProcess, server: ServerProcess, link: Peer) -> None:
    load_on(server, lender)
    lab.set_link(link, up=False)
    started = time.monotonic()
    assert wait_for(lambda: not httpx.get(f"{server.url}/api/ps", timeout=30).json()["models"],
                    timeout=BOUND), server.log()[-3000:]
    print(f"idle model forgotten {time.monotonic() - started:.1f}s after the link was cut",
          file=sys.stderr)
    assert f"RPC worker {lender.endpoint} closed its connection or stopped answering" \
        in server.log()
    assert server.alive()
    assert lender.alive()  # it never heard a thing


def test_a_stream_on_a_vanished_worker_ends_with_an_error_record(
        lab: Lab, lender: WorkerProcess, server: ServerProcess, link: Peer) -> None:
    # The gate's slots held by the last test's runner are free again: its keepalive probes
    # (answered with a reset once the link is back) dropped them.
    load_on(server, lender)
    body = {"model": MODEL, "prompt": "Count from one to a thousand in words.",
            "options": {**SPLIT, "num_predict": 2000}}
    timeout = httpx.Timeout(30, read=BOUND)  # a stream that hangs fails the test here
    with httpx.Client(base_url=server.url, timeout=timeout) as http, \
            http.stream("POST", "/api/generate", json=body) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        for _ in range(3):
            assert json.loads(next(lines))["done"] is False
        lab.set_link(link, up=False)
        started = time.monotonic()
        last = [json.loads(line) for line in lines if line][-1]
    print(f"stream ended {time.monotonic() - started:.1f}s after the link was cut",
          file=sys.stderr)
    assert "error" in last, last
    assert MODEL in last["error"]
    assert time.monotonic() - started < BOUND
    assert server.alive()
    assert wait_for(lambda: not httpx.get(f"{server.url}/api/ps", timeout=30).json()["models"],
                    timeout=30), server.log()[-3000:]
