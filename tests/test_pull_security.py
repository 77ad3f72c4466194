"""A rogue registry tries every trick in shared/reference/security.md that concerns pulls.

Each case must end in a clear 4xx error (507 for a size no disk holds) that names no filesystem
path, with nothing written, read, listed or deleted outside the store: a canary folder beside the
store is compared before and after, and the server runs with an audit hook that logs any file
operation inside it. The store itself must be unchanged, and no "internal" service reached.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import ollama
import pytest

from tests.support.files import snapshot
from tests.support.gguf_files import write_tiny_llama
from tests.support.rogue import Handler, Reply, RogueRequest, RogueServer, digest_of, manifest_for
from tests.support.server import PROJECT_SRC, ServerProcess

AUDIT_HOOK = Path(__file__).parent / "support" / "audit"
REPO = "library/evil"
CONFIG = json.dumps({"model_format": "gguf", "model_family": "llama"}).encode()


@dataclass
class World:
    home: Path
    server: ServerProcess
    rogue: RogueServer
    internal: RogueServer
    tiny: bytes

    @property
    def store(self) -> Path:
        return self.home / "models"

    @property
    def canary(self) -> Path:
        return self.home / "canary"

    @property
    def audit_log(self) -> Path:
        return self.home / "audit.log"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("rogue")
    (home / "canary").mkdir()
    (home / "canary" / "secret.txt").write_text("do not touch")
    (home / "canary" / "passwd").write_text("root:x:0:0")
    tiny = write_tiny_llama(home / "tiny.gguf", seed=20).read_bytes()
    env = {"HOMEPORT_MODELS": str(home / "models"),
           "HOMEPORT_TEST_WATCH_DIR": str(home / "canary"),
           "HOMEPORT_TEST_WATCH_LOG": str(home / "audit.log"),
           "PYTHONPATH": f"{AUDIT_HOOK}{os.pathsep}{PROJECT_SRC}"}
    rogue = RogueServer().start()
    internal = RogueServer().start()
    internal.serve("/secret", Reply(200, b"internal secret"))
    with ServerProcess(home, env=env) as server:
        yield World(home, server, rogue, internal, tiny)
    rogue.stop()
    internal.stop()


@pytest.fixture
def fresh(world: World) -> World:
    for server in (world.rogue, world.internal):
        server.seen.clear()
    world.rogue.routes.clear()
    world.rogue.serve(f"/v2/{REPO}/blobs/{digest_of(CONFIG)}", Reply(200, CONFIG))
    return world


def model_manifest(digest: str, size: int, config: tuple[str, int] | None = None
                   ) -> dict[str, object]:
    return manifest_for(config or (digest_of(CONFIG), len(CONFIG)), [("model", digest, size)])


# --- the cases: each scripts the rogue registry and says what the error must contain ------------


def traversal_digest(world: World, digest: str) -> None:
    world.rogue.serve_manifest(REPO, "latest", model_manifest(digest, 12))
    world.rogue.serve(f"/v2/{REPO}/blobs/{digest}", Reply(200, b"root:x:0:0\n"))


def wrong_digest(world: World) -> None:
    claimed = digest_of(b"something else")
    world.rogue.serve_manifest(REPO, "latest", model_manifest(claimed, len(world.tiny)))
    world.rogue.serve_blob(REPO, claimed, world.tiny)


def size_smaller_than_bytes(world: World) -> None:
    digest = digest_of(world.tiny)
    world.rogue.serve_manifest(REPO, "latest", model_manifest(digest, len(world.tiny) - 100))
    world.rogue.serve_blob(REPO, digest, world.tiny)


def size_larger_than_bytes(world: World) -> None:
    digest = digest_of(world.tiny)
    claimed = len(world.tiny) + 100  # the registry backs the lie up in Content-Range
    world.rogue.serve_manifest(REPO, "latest", model_manifest(digest, claimed))
    world.rogue.serve_blob(REPO, digest, world.tiny, claimed_total=claimed)


def size_no_disk_holds(world: World) -> None:
    digest = digest_of(world.tiny)
    world.rogue.serve_manifest(REPO, "latest", model_manifest(digest, 1 << 55))
    world.rogue.serve_blob(REPO, digest, world.tiny, claimed_total=1 << 55)


def config_shares_the_layer_digest(world: World) -> None:
    digest = digest_of(world.tiny)
    world.rogue.serve_manifest(REPO, "latest", model_manifest(
        digest, len(world.tiny), config=(digest, len(world.tiny))))
    world.rogue.serve_blob(REPO, digest, world.tiny)


def blob_redirect_to(target: Callable[[World], str]) -> Callable[[World], None]:
    def setup(world: World) -> None:
        digest = digest_of(world.tiny)
        world.rogue.serve_manifest(REPO, "latest", model_manifest(digest, len(world.tiny)))
        world.rogue.serve(f"/v2/{REPO}/blobs/{digest}",
                          Reply(307, headers={"Location": target(world)}))
    return setup


def manifest_redirect_to_internal(world: World) -> None:
    world.rogue.serve(f"/v2/{REPO}/manifests/latest", Reply(302, headers={
        "Location": f"http://{world.internal.host}/secret"}))


def realm_on_another_host(world: World) -> None:
    world.rogue.serve(f"/v2/{REPO}/manifests/latest", Reply(401, headers={
        "WWW-Authenticate": f'Bearer realm="http://{world.internal.host}/secret",'
                            f'service="registry",scope="repository:{REPO}:pull"'}))


def garbage(body: bytes) -> Callable[[World], None]:
    return lambda world: world.rogue.serve_manifest(REPO, "latest", body)


@dataclass(frozen=True)
class Case:
    setup: Callable[[World], None]
    error: str
    status: int = 400
    name: str = f"{REPO}:latest"
    insecure: bool = True


CASES = {
    "digest with ../": Case(lambda w: traversal_digest(w, "sha256:../../canary/secret.txt"),
                            "invalid digest format"),
    "sha256:../../etc/passwd": Case(lambda w: traversal_digest(w, "sha256:../../etc/passwd"),
                                    "invalid digest format"),
    "63-character digest": Case(lambda w: traversal_digest(w, "sha256:" + "a" * 63),
                                "invalid digest format"),
    "wrong digest for the bytes": Case(wrong_digest, "digest mismatch"),
    "size smaller than the bytes": Case(size_smaller_than_bytes, "a size that lies"),
    "size larger than the bytes": Case(size_larger_than_bytes, "with other bytes"),
    "size no disk holds": Case(size_no_disk_holds, "not enough disk space", 507),
    "garbage manifest": Case(garbage(b"\x00\xff not json {{"), "invalid manifest"),
    "manifest list instead of a manifest": Case(
        garbage(b'{"schemaVersion":2,"manifests":[]}'), "invalid manifest"),
    "manifest too large": Case(garbage(b" " * (5 * 1024 * 1024)), "larger than"),
    "config and layer share a digest": Case(config_shares_the_layer_digest, "share one digest"),
    "redirect to another loopback port": Case(
        blob_redirect_to(lambda w: f"http://{w.internal.host}/secret"), "loopback"),
    "redirect to cloud metadata": Case(
        blob_redirect_to(lambda _: "http://169.254.169.254/latest/meta-data/"), "link-local"),
    "redirect to file://": Case(blob_redirect_to(lambda _: "file:///etc/passwd"),
                                "refused a redirect"),
    "manifest redirected to another host": Case(manifest_redirect_to_internal,
                                                "for a manifest"),
    "auth realm on another host": Case(realm_on_another_host, "auth realm must be on"),
    "plain http without insecure": Case(lambda w: None, "insecure", insecure=False,
                                        name=f"http://{{host}}/{REPO}:latest"),
}


@pytest.mark.parametrize("case_name", list(CASES))
def test_a_rogue_registry_gets_a_clear_error_and_touches_nothing(fresh: World,
                                                                 case_name: str) -> None:
    case = CASES[case_name]
    world = fresh
    case.setup(world)
    canary_before = snapshot(world.canary)
    store_before = snapshot(world.store)
    name = case.name.replace("{host}", world.rogue.host)
    if "://" not in name:
        name = f"{world.rogue.host}/{name}"

    client = ollama.Client(host=world.server.url, timeout=60)
    with pytest.raises(ollama.ResponseError) as failure:
        client.pull(name, insecure=case.insecure, stream=False)
    assert failure.value.status_code == case.status
    message = failure.value.error
    assert case.error in message
    assert str(world.home) not in message
    assert "/tmp" not in message

    assert snapshot(world.canary) == canary_before
    assert not world.audit_log.exists(), world.audit_log.read_text()
    assert snapshot(world.store) == store_before
    assert world.internal.seen == []
    if not case.insecure:
        assert world.rogue.seen == []
    # The same error streamed: one error line after the progress began.
    with pytest.raises(ollama.ResponseError) as streamed:
        list(client.pull(name, insecure=case.insecure, stream=True))
    assert case.error in streamed.value.error
    assert httpx.get(f"{world.server.url}/api/version").status_code == 200


def test_a_bearer_challenge_on_the_registrys_own_host_is_answered(fresh: World) -> None:
    world = fresh
    digest = digest_of(world.tiny)
    world.rogue.serve_manifest(REPO, "auth", model_manifest(digest, len(world.tiny)))
    world.rogue.serve_blob(REPO, digest, world.tiny)
    world.rogue.serve("/token", Reply(200, b'{"token": "good-token"}'))
    challenge = Reply(401, headers={
        "WWW-Authenticate": f'Bearer realm="http://{world.rogue.host}/token",'
                            f'service="rogue",scope="repository:{REPO}:pull"'})
    for path in (f"/v2/{REPO}/manifests/auth", f"/v2/{REPO}/blobs/{digest}"):
        serve = world.rogue.routes[path]

        def guarded(request: RogueRequest, serve: Handler = serve) -> Reply | None:
            if request.headers.get("Authorization") != "Bearer good-token":
                return challenge
            return serve(request)

        world.rogue.routes[path] = guarded

    client = ollama.Client(host=world.server.url)
    assert client.pull(f"{world.rogue.host}/{REPO}:auth", insecure=True).status == "success"
    manifest_requests = [headers for _, path, headers in world.rogue.seen
                         if path == f"/v2/{REPO}/manifests/auth"]
    assert "application/vnd.docker.distribution.manifest.v2+json" in manifest_requests[0]["Accept"]
    assert manifest_requests[-1]["Authorization"] == "Bearer good-token"
    token_requests = [path for _, path, _ in world.rogue.seen if path.startswith("/token")]
    assert len(token_requests) == 1
    assert "scope=repository%3Alibrary%2Fevil%3Apull" in token_requests[0]
    assert "service=rogue" in token_requests[0]
    client.delete(f"{world.rogue.host}/{REPO}:auth")


def test_a_redirect_to_the_registrys_own_origin_is_followed(fresh: World) -> None:
    world = fresh
    digest = digest_of(world.tiny)
    world.rogue.serve_manifest(REPO, "moved", model_manifest(digest, len(world.tiny)))
    world.rogue.serve_blob("storage", digest, world.tiny)
    world.rogue.serve(f"/v2/{REPO}/blobs/{digest}",
                      Reply(307, headers={"Location": f"/v2/storage/blobs/{digest}"}))
    client = ollama.Client(host=world.server.url)
    assert client.pull(f"{world.rogue.host}/{REPO}:moved", insecure=True).status == "success"
    assert any(path == f"/v2/storage/blobs/{digest}" for _, path, _ in world.rogue.seen)
    client.delete(f"{world.rogue.host}/{REPO}:moved")


def test_the_audit_hook_sees_file_operations_in_the_canary(tmp_path: Path) -> None:
    """The control for the canary checks: a server told to serve a canary as an Ollama store is
    caught listing it."""
    canary = tmp_path / "canary"
    (canary / "manifests").mkdir(parents=True)
    log = tmp_path / "audit.log"
    env = {"HOMEPORT_MODELS": str(tmp_path / "models"), "HOMEPORT_EXTRA_STORES": str(canary),
           "HOMEPORT_TEST_WATCH_DIR": str(canary), "HOMEPORT_TEST_WATCH_LOG": str(log),
           "PYTHONPATH": f"{AUDIT_HOOK}{os.pathsep}{PROJECT_SRC}"}
    with ServerProcess(tmp_path, env=env) as server:
        assert httpx.get(f"{server.url}/api/tags").status_code == 200
    assert "os.listdir" in log.read_text()


def test_upload_and_create_refuse_digests_that_name_paths(fresh: World) -> None:
    world = fresh
    store_before = snapshot(world.store)
    url = world.server.url
    for digest in ("sha256:..%2F..%2Fcanary%2Fsecret.txt", "sha256:../../canary/passwd",
                   "sha256:" + "b" * 63, "md5:" + "c" * 32):
        for method in ("HEAD", "POST"):
            response = httpx.request(method, f"{url}/api/blobs/{digest}", content=b"x")
            assert response.status_code == 400, (method, digest)
        created = httpx.post(f"{url}/api/create", json={
            "model": "sneaky", "files": {"model.gguf": digest.replace("%2F", "/")}})
        assert created.status_code == 400
        assert "invalid digest format" in created.json()["error"]
    sneaky = httpx.post(f"{url}/api/create", json={
        "model": "sneaky", "files": {"../../canary/passwd": digest_of(b"x")}})
    assert sneaky.status_code == 400
    assert sneaky.json()["error"] == "file path must be relative"
    assert snapshot(world.store) == store_before
    assert not world.audit_log.exists()
