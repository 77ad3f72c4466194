"""Pulling from a real OCI registry (Debian's docker-registry) through homeport, with the official
``ollama`` client, and a recording proxy in between to see what went over the wire."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.conftest import DETERMINISTIC, MODEL
from tests.support.files import assert_blobs_are_their_digests, blob_names
from tests.support.gguf_files import renamed_bundled_copy, write_tiny_llama
from tests.support.proxy import HttpProxy
from tests.support.registry import DockerRegistry
from tests.support.server import ServerProcess

PART_SIZE = 64 * 1024


@pytest.fixture(scope="module")
def proxy(registry: DockerRegistry) -> Iterator[HttpProxy]:
    proxy = HttpProxy(registry.port).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pull-server")


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[ServerProcess]:
    env = {"HOMEPORT_MODELS": str(home / "models"), "HOMEPORT_PULL_PART_SIZE": str(PART_SIZE),
           "HOMEPORT_PULL_CONNECTIONS": "4", "HOMEPORT_CONTEXT_LENGTH": "512"}
    with ServerProcess(home, env=env) as server:
        yield server


@pytest.fixture
def client(server: ServerProcess) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=120)


@pytest.fixture
def store(home: Path) -> Path:
    return home / "models"


def pull_lines(client: ollama.Client, name: str) -> list[ollama.ProgressResponse]:
    return list(client.pull(name, insecure=True, stream=True))


def test_pull_streams_progress_and_stores_the_model_as_pushed(
        client: ollama.Client, registry: DockerRegistry, proxy: HttpProxy, store: Path,
        tmp_path: Path) -> None:
    gguf = write_tiny_llama(tmp_path / "tiny.gguf", seed=1, n_ff=1024)
    pushed = registry.push_model("library/tiny", "latest", gguf, template="{{ .Prompt }}",
                                 params={"temperature": 0.2, "stop": ["<|end|>"]})
    name = f"{proxy.host}/library/tiny"
    lines = pull_lines(client, name)

    statuses = [line.status for line in lines]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    for kind, digest in pushed.digests.items():
        progress = [line for line in lines if line.digest == digest]
        assert progress, kind
        assert progress[0].status == f"pulling {digest[7:19]}"
        assert progress[-1].completed == progress[-1].total
    # The model blob came in ranged parts that tile it exactly.
    size = gguf.stat().st_size
    ranges = [seen.headers["range"] for seen in proxy.blob_requests(pushed.model_digest)]
    assert "bytes=0-0" in ranges  # where the blob is and how big
    parts = sorted(tuple(map(int, r[6:].split("-"))) for r in ranges if r != "bytes=0-0")
    assert len(parts) == -(-size // PART_SIZE) > 4
    assert parts[0][0] == 0
    assert parts[-1][1] == size - 1
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(parts))

    # On disk: Ollama's layout, the registry's manifest bytes unchanged, blobs verified.
    manifest_file = store / "manifests" / proxy.host / "library" / "tiny" / "latest"
    assert manifest_file.read_bytes() == pushed.manifest
    assert {f"sha256-{d[7:]}" for d in pushed.digests.values()} <= blob_names(store)
    assert_blobs_are_their_digests(store)
    assert not [name for name in blob_names(store) if ".partial" in name]

    listed = {model.model: model for model in client.list().models}
    model = listed[f"{proxy.host}/library/tiny:latest"]
    assert model.digest == hashlib.sha256(pushed.manifest).hexdigest()
    manifest = json.loads(pushed.manifest)
    assert model.size == manifest["config"]["size"] + sum(
        layer["size"] for layer in manifest["layers"])
    info = client.show(name)
    assert info.template == "{{ .Prompt }}"
    assert "temperature" in (info.parameters or "")
    # A pulled model loads and answers through the same path as the bundled one.
    reply = client.chat(name, messages=[{"role": "user", "content": "hi"}],
                        options={"num_predict": 4, "temperature": 0})
    assert reply.done
    assert (reply.eval_count or 0) > 0


def test_a_second_pull_downloads_nothing(client: ollama.Client, registry: DockerRegistry,
                                         proxy: HttpProxy, tmp_path: Path) -> None:
    pushed = registry.push_model("library/again", "v1",
                                 write_tiny_llama(tmp_path / "a.gguf", seed=5))
    name = f"{proxy.host}/library/again:v1"
    pull_lines(client, name)
    before = len(proxy.requests)
    lines = pull_lines(client, name)
    after = proxy.requests[before:]
    assert [seen.path.split("/")[-2] for seen in after] == ["manifests"]
    for digest in pushed.digests.values():
        progress = [line for line in lines if line.digest == digest]
        assert len(progress) == 1
        assert progress[0].completed == progress[0].total
    assert lines[-1].status == "success"


def test_a_pulled_copy_of_the_bundled_model_answers_exactly_like_it(
        client: ollama.Client, registry: DockerRegistry, proxy: HttpProxy,
        tmp_path: Path) -> None:
    gguf = renamed_bundled_copy(tmp_path / "smol.gguf")
    registry.push_model("library/smol", "copy", gguf)
    name = f"{proxy.host}/library/smol:copy"
    assert client.pull(name, insecure=True, stream=False).status == "success"
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    pulled = client.chat(name, messages=messages, options=DETERMINISTIC)
    bundled = client.chat(MODEL, messages=messages, options=DETERMINISTIC)
    assert pulled.message.content.strip()
    assert pulled.message.content == bundled.message.content
    assert client.show(name).modelinfo["general.name"].strip() == "pulled"


def test_a_tag_that_replaces_an_older_one_removes_the_unused_layers(
        client: ollama.Client, registry: DockerRegistry, proxy: HttpProxy, store: Path,
        tmp_path: Path) -> None:
    template = "{{ .System }} {{ .Prompt }}"
    old = registry.push_model("library/swap", "latest",
                              write_tiny_llama(tmp_path / "old.gguf", seed=2), template=template)
    name = f"{proxy.host}/library/swap"
    pull_lines(client, name)
    client.copy(name, "keep:old")  # a second name for the old model keeps its layers alive
    new = registry.push_model("library/swap", "latest",
                              write_tiny_llama(tmp_path / "new.gguf", seed=3), template=template)
    assert new.model_digest != old.model_digest
    assert new.digests["template"] == old.digests["template"]

    statuses = [line.status for line in pull_lines(client, name)]
    assert "removing unused layers" not in statuses  # keep:old still uses the old model file
    blobs = blob_names(store)
    assert f"sha256-{old.model_digest[7:]}" in blobs
    assert f"sha256-{new.model_digest[7:]}" in blobs

    client.delete("keep:old")
    blobs = blob_names(store)
    assert f"sha256-{old.model_digest[7:]}" not in blobs
    assert f"sha256-{new.model_digest[7:]}" in blobs
    assert f"sha256-{new.digests['template'][7:]}" in blobs  # still used by the new manifest

    newest = registry.push_model("library/swap", "latest",
                                 write_tiny_llama(tmp_path / "newest.gguf", seed=4))
    statuses = [line.status for line in pull_lines(client, name)]
    assert statuses[-2:] == ["removing unused layers", "success"]
    blobs = blob_names(store)
    assert f"sha256-{new.model_digest[7:]}" not in blobs
    assert f"sha256-{new.digests['template'][7:]}" not in blobs
    assert f"sha256-{newest.model_digest[7:]}" in blobs
    assert client.show(name).template != template


def test_two_concurrent_pulls_of_one_model_share_one_download(
        client: ollama.Client, registry: DockerRegistry, proxy: HttpProxy,
        tmp_path: Path) -> None:
    gguf = write_tiny_llama(tmp_path / "shared.gguf", seed=6, n_ff=4096)
    pushed = registry.push_model("library/shared", "latest", gguf)
    name = f"{proxy.host}/library/shared"
    results: list[list[ollama.ProgressResponse]] = []
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            results.append(pull_lines(client, name))
        except BaseException as exc:
            errors.append(exc)

    proxy.bytes_per_second = 250_000  # per connection: slow enough that the two pulls overlap
    try:
        threads = [threading.Thread(target=pull) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        proxy.bytes_per_second = None
    assert not errors
    assert [lines[-1].status for lines in results] == ["success", "success"]
    for lines in results:  # each pull watched the download while it was under way
        progress = [line for line in lines if line.digest == pushed.model_digest]
        assert any(0 < (line.completed or 0) < gguf.stat().st_size for line in progress)
    requests = proxy.blob_requests(pushed.model_digest)
    probes = [seen for seen in requests if seen.headers.get("range") == "bytes=0-0"]
    assert len(probes) == 1, "one download, not two"
    fetched = 0
    for seen in requests:
        if seen not in probes:
            start, end = map(int, seen.headers["range"][6:].split("-"))
            fetched += end - start + 1
    assert fetched == gguf.stat().st_size


def test_pull_errors_have_statuses_and_say_what_to_do(client: ollama.Client,
                                                       registry: DockerRegistry,
                                                       server: ServerProcess) -> None:
    with pytest.raises(ollama.ResponseError) as missing:
        client.pull(f"{registry.host}/library/nothing:here", insecure=True, stream=False)
    assert missing.value.status_code == 404
    assert "not found in the registry" in missing.value.error
    with pytest.raises(ollama.ResponseError) as invalid:
        client.pull("bad/../name", stream=False)
    assert invalid.value.status_code == 400
    assert invalid.value.error == "invalid model name"
    with pytest.raises(ollama.ResponseError) as plain:
        client.pull(f"http://{registry.host}/library/tiny", stream=False)
    assert plain.value.status_code == 400
    assert "insecure" in plain.value.error
    # Streamed, an error after the first line is one more line: the client raises it.
    with pytest.raises(ollama.ResponseError) as streamed:
        list(client.pull(f"{registry.host}/library/nothing:here", insecure=True, stream=True))
    assert "not found in the registry" in streamed.value.error
    with pytest.raises(ollama.ResponseError) as absent:
        client.chat("never-pulled:7b", messages=[{"role": "user", "content": "hi"}])
    assert absent.value.status_code == 404
    assert absent.value.error == "model 'never-pulled:7b' not found, try pulling it first"
    push = httpx.post(f"{server.url}/api/push", json={"model": MODEL})
    assert push.status_code == 400
    assert "not supported" in push.json()["error"]


def test_an_empty_layer_is_stored_without_asking_for_it(client: ollama.Client,
                                                       registry: DockerRegistry, proxy: HttpProxy,
                                                       store: Path, tmp_path: Path) -> None:
    pushed = registry.push_model("library/empty", "latest",
                                 write_tiny_llama(tmp_path / "e.gguf", seed=7), system="")
    empty = pushed.digests["system"]
    assert empty == "sha256:" + hashlib.sha256(b"").hexdigest()
    assert pull_lines(client, f"{proxy.host}/library/empty")[-1].status == "success"
    assert proxy.blob_requests(empty) == []
    assert (store / "blobs" / f"sha256-{empty[7:]}").read_bytes() == b""
