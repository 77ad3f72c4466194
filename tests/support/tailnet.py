"""A homeport server on a fake tailnet: the fake tailscaled, namespaced peers, policy reloads.

Helpers run real clients inside the peers' namespaces: curl (status, headers, body) and the
official ``ollama`` client (``peer_client.py``).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_tailscaled import FakeTailscaled
from tests.support.netns import Lab, LabUnavailable, Peer
from tests.support.server import ServerProcess

PEER_CLIENT = str(Path(__file__).with_name("peer_client.py"))


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


def parse_curl(output: str) -> Reply:
    """``curl -i`` output (newlines already universal): the last header block and the body."""
    head, _, body = output.partition("\n\n")
    while head.startswith("HTTP/") and " 100 " in head.split("\n")[0]:
        head, _, body = body.partition("\n\n")
    lines = head.split("\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(status, headers, body)


@dataclass
class TailnetServer:
    server: ServerProcess
    fake: FakeTailscaled | None  # None: no tailscaled at all
    lab: Lab
    policy_path: Path
    listening_while_waiting: bool = False

    @property
    def tailnet_url(self) -> str:
        return f"http://{self.lab.server_ipv4}:{self.server.port}"

    @property
    def tailnet_url6(self) -> str:
        return f"http://[{self.lab.server_ipv6}]:{self.server.port}"

    def _signal_and_wait(self, marker: str, timeout: float = 15.0) -> None:
        before = self.server.log().count(marker)
        assert self.server.process is not None
        self.server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.log().count(marker) > before:
                return
            time.sleep(0.05)
        raise AssertionError(f"no {marker!r} in the server log:\n{self.server.log()[-3000:]}")

    def apply_policy(self, text: str) -> None:
        """Write the policy file and reload it with SIGHUP; wait until the server says so."""
        self.policy_path.write_text(text)
        self._signal_and_wait("policy reloaded")

    def apply_broken_policy(self, text: str) -> None:
        self.policy_path.write_text(text)
        self._signal_and_wait("policy not reloaded")

    def curl(self, peer: Peer | None, url: str, *args: str, timeout: float = 120) -> Reply:
        """curl from a peer's namespace (None: from this host)."""
        argv = ["curl", "-sS", "-i", "--max-time", str(int(timeout)), *args, url]
        if peer is None:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 10)
        else:
            result = self.lab.run(peer, argv, timeout=timeout + 10)
        if result.returncode != 0 and not result.stdout:
            return Reply(0, {}, result.stderr)
        return parse_curl(result.stdout)

    def ollama(self, peer: Peer, action: str, model: str = "", *extra: str,
               url: str | None = None) -> dict[str, Any]:
        """The official ollama client, run in the peer's namespace; its JSON result."""
        # -P: the script's folder (tests/support, with its http.py) must not shadow the stdlib
        result = self.lab.run(peer, [sys.executable, "-P", PEER_CLIENT, url or self.tailnet_url,
                                     action, model, *extra], timeout=300)
        assert result.returncode == 0, result.stderr
        answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return answer


def audit_lines(home: Path) -> list[dict[str, Any]]:
    path = home / "data" / "audit" / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_audit(home: Path, after: int = 0, **fields: Any) -> dict[str, Any]:
    """The newest audit line with these field values, among those after the first ``after`` (the
    count before the request, so that an earlier request's line is never taken for its own); the
    line is written just after the response is sent, so it may lag the client by a moment."""
    deadline = time.monotonic() + 10
    while True:
        found = [entry for entry in audit_lines(home)[after:]
                 if all(entry.get(key) == value for key, value in fields.items())]
        if found:
            return found[-1]
        if time.monotonic() > deadline:
            raise AssertionError(f"no audit line with {fields}: {audit_lines(home)[-5:]}")
        time.sleep(0.05)


@contextlib.contextmanager
def tailnet_lab(*peers: str, lan_stranger: bool = False) -> Iterator[Lab]:
    """A lab with these tailnet peers (and a LAN stranger), each in its own network namespace;
    closed afterwards and checked for leftovers. Skips where namespaces cannot be made."""
    lab = Lab()
    try:
        lab.open()
    except LabUnavailable as exc:
        pytest.skip(f"network namespaces cannot be made here, tailnet tests skipped: {exc}")
    try:
        for name in peers:
            lab.add_tailnet_peer(name)
        if lan_stranger:
            lab.add_lan_stranger()
        yield lab
    finally:
        lab.close()
    assert not lab.leftovers(), "namespaces or links were left behind"
