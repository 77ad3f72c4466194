"""Pulls that are interrupted: a connection dropped in the middle of a blob, and the server killed
with SIGKILL in the middle of a pull. Neither may leave a visible model or lose what was fetched."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.support.files import assert_blobs_are_their_digests
from tests.support.gguf_files import write_tiny_llama
from tests.support.proxy import HttpProxy
from tests.support.registry import DockerRegistry, Pushed
from tests.support.server import ServerProcess

PART_SIZE = 1024 * 1024


@pytest.fixture
def proxy(registry: DockerRegistry) -> Iterator[HttpProxy]:
    proxy = HttpProxy(registry.port).start()
    yield proxy
    proxy.stop()


def server_env(home: Path) -> dict[str, str]:
    return {"HOMEPORT_MODELS": str(home / "models"), "HOMEPORT_PULL_PART_SIZE": str(PART_SIZE),
            "HOMEPORT_PULL_CONNECTIONS": "2"}


def push_big(registry: DockerRegistry, tmp_path: Path, repository: str, seed: int
             ) -> tuple[int, Pushed]:
    """A ~1.6 MB real model (two parts here), pushed as ``repository:latest``."""
    gguf = write_tiny_llama(tmp_path / f"{seed}.gguf", seed=seed, n_ff=4096)
    return gguf.stat().st_size, registry.push_model(repository, "latest", gguf)


def fetched_bytes(requests: list[tuple[int, int]]) -> int:
    return sum(end - start + 1 for start, end in requests)


def ranges(proxy: HttpProxy, digest: str, since: int = 0) -> list[tuple[int, int]]:
    found = []
    for seen in proxy.blob_requests(digest)[since:]:
        value = seen.headers.get("range", "")
        if value and value != "bytes=0-0":
            start, end = value[6:].split("-")
            found.append((int(start), int(end)))
    return found


def test_a_connection_cut_in_the_middle_of_a_blob_resumes_where_it_stopped(
        registry: DockerRegistry, proxy: HttpProxy, tmp_path: Path) -> None:
    size, pushed = push_big(registry, tmp_path, "library/cut", seed=10)
    assert size > PART_SIZE + 300_000
    proxy.cut_blob_after = 300_000
    with ServerProcess(tmp_path / "server", env=server_env(tmp_path / "server")) as server:
        client = ollama.Client(host=server.url)
        lines = list(client.pull(f"{proxy.host}/library/cut", insecure=True, stream=True))
        assert lines[-1].status == "success"
        assert proxy.cuts == 1
        requested = ranges(proxy, pushed.model_digest)
        # The part that was cut was asked for again from where its bytes stopped, not from 0,
        # so the bytes that crossed the wire are the blob's, once (plus HTTP headers).
        assert any(start not in (0, PART_SIZE) and end in (PART_SIZE - 1, size - 1)
                   for start, end in requested), requested
        received = sum(seen.response_bytes for seen in proxy.blob_requests(pushed.model_digest))
        assert size < received < size + 20_000
        assert_blobs_are_their_digests(tmp_path / "server" / "models")
        reply = client.generate(f"{proxy.host}/library/cut", prompt="hi",
                                options={"num_predict": 2})
        assert reply.done


def _wait_for_progress(blobs: Path, timeout: float = 30) -> int:
    """Bytes a partial download has recorded as done, once it has recorded some."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for state in blobs.glob("*.partial.json"):
            try:
                done = sum(part[2] for part in json.loads(state.read_text())["parts"])
            except (OSError, ValueError, KeyError):
                continue
            if done > 0:
                return done
        time.sleep(0.05)
    raise AssertionError("the pull recorded no progress")


def test_a_server_killed_during_a_pull_leaves_no_model_and_the_next_pull_resumes(
        registry: DockerRegistry, proxy: HttpProxy, tmp_path: Path) -> None:
    size, pushed = push_big(registry, tmp_path, "library/killed", seed=11)
    name = f"{proxy.host}/library/killed"
    home = tmp_path / "server"
    store = home / "models"
    proxy.bytes_per_second = 100_000  # per connection: the pull takes several seconds

    server = ServerProcess(home, env=server_env(home)).start()
    pulling = threading.Thread(target=lambda: _pull_ignoring_errors(server.url, name),
                               daemon=True)
    pulling.start()
    recorded = _wait_for_progress(store / "blobs")
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    pulling.join(10)
    assert 0 < recorded < size

    manifests = store / "manifests" / proxy.host
    assert not manifests.exists() or not any(manifests.rglob("*"))
    assert list((store / "blobs").glob("*.partial"))  # kept, to resume from
    proxy.bytes_per_second = None
    before = len(proxy.blob_requests(pushed.model_digest))
    with ServerProcess(home, env=server_env(home)) as restarted:
        client = ollama.Client(host=restarted.url)
        assert name + ":latest" not in {model.model for model in client.list().models}
        lines = list(client.pull(name, insecure=True, stream=True))
        assert lines[-1].status == "success"
        assert name + ":latest" in {model.model for model in client.list().models}
    resumed = ranges(proxy, pushed.model_digest, since=before)
    assert fetched_bytes(resumed) <= size - recorded
    assert_blobs_are_their_digests(store)
    assert not list((store / "blobs").glob("*.partial*"))


def _pull_ignoring_errors(url: str, name: str) -> None:
    try:
        with httpx.stream("POST", f"{url}/api/pull", json={"model": name, "insecure": True},
                          timeout=60) as response:
            for _ in response.iter_lines():
                pass
    except httpx.HTTPError:
        pass  # the server is killed mid-stream: that is the point


def _blob_bytes(proxy: HttpProxy, digest: str) -> int:
    return sum(seen.response_bytes for seen in proxy.blob_requests(digest))


def test_a_client_that_goes_away_stops_its_download_and_a_later_pull_resumes_it(
        registry: DockerRegistry, proxy: HttpProxy, tmp_path: Path) -> None:
    size, pushed = push_big(registry, tmp_path, "library/leaver", seed=12)
    name = f"{proxy.host}/library/leaver"
    home = tmp_path / "server"
    proxy.bytes_per_second = 100_000
    with ServerProcess(home, env=server_env(home)) as server:
        with httpx.stream("POST", f"{server.url}/api/pull",
                          json={"model": name, "insecure": True}, timeout=30) as response:
            for line in response.iter_lines():
                progress = json.loads(line)
                if progress.get("digest") == pushed.model_digest and progress.get("completed"):
                    break  # leave mid-download
        # The download stops soon after: the bytes the registry sends stop growing.
        previous, stable = -1, 0
        deadline = time.monotonic() + 10
        while stable < 3 and time.monotonic() < deadline:
            current = _blob_bytes(proxy, pushed.model_digest)
            stable = stable + 1 if current == previous else 0
            previous = current
            time.sleep(0.3)
        assert stable == 3
        assert previous < size
        assert list((home / "models" / "blobs").glob("*.partial"))
        assert name + ":latest" not in {m.model for m in ollama.Client(server.url).list().models}

        proxy.bytes_per_second = None
        before = len(proxy.blob_requests(pushed.model_digest))
        lines = list(ollama.Client(server.url).pull(name, insecure=True, stream=True))
        assert lines[-1].status == "success"
        assert fetched_bytes(ranges(proxy, pushed.model_digest, since=before)) < size
    assert_blobs_are_their_digests(home / "models")
