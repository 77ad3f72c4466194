"""Starting the server tidies the writable store as Ollama's does: unused layers, stale partial
downloads and crash leftovers go; models, young uploads, resumable pulls and unknown files stay."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import httpx
import pytest

from homeport.store.digests import blob_path, partial_path, partial_state_path
from homeport.store.prune import prune
from homeport.store.store import ModelStore
from tests.support.gguf_files import write_tiny_llama
from tests.support.models import install_model
from tests.support.server import ServerProcess

HOUR = 3600.0
DAY = 24 * HOUR


def _aged(path: Path, data: bytes, age: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def _blob(blobs: Path, data: bytes, age: float) -> Path:
    return _aged(blob_path(blobs, "sha256:" + hashlib.sha256(data).hexdigest()), data, age)


def _lay_out(models: Path, tmp_path: Path) -> dict[str, Path]:
    """A store with one model and, around it, every kind of file the prune decides about."""
    install_model(models, "tiny:latest", write_tiny_llama(tmp_path / "tiny.gguf", seed=7))
    for path in (models / "blobs").iterdir():  # the model's own layers are old too
        os.utime(path, (time.time() - 30 * DAY,) * 2)
    blobs = models / "blobs"
    stale_digest = "sha256:" + "a" * 64
    young_digest = "sha256:" + "b" * 64
    return {
        "unused_old": _blob(blobs, b"a layer nobody uses", 2 * HOUR),
        "unused_young": _blob(blobs, b"an upload waiting for its create", 10.0),
        "stale_partial": _aged(partial_path(blobs, stale_digest), b"half", 8 * DAY),
        "stale_record": _aged(partial_state_path(blobs, stale_digest), b"{}", 8 * DAY),
        "young_partial": _aged(partial_path(blobs, young_digest), b"half", 1 * DAY),
        "young_record": _aged(partial_state_path(blobs, young_digest), b"{}", 10.0),
        "upload_leftover": _aged(blobs / ("sha256-" + "c" * 64 + ".upload-x1y2"), b"u", 2 * HOUR),
        "write_leftover": _aged(blobs / ".sha256-cafe.0123.tmp", b"t", 2 * HOUR),
        "manifest_leftover": _aged(
            models / "manifests/registry.ollama.ai/library/tiny/.latest.89ab.tmp", b"m", 2 * HOUR),
        "unknown": _aged(blobs / "notes.txt", b"the user's own file", 30 * DAY),
    }


GONE = {"unused_old", "stale_partial", "stale_record", "upload_leftover", "write_leftover",
        "manifest_leftover"}


def test_server_start_removes_only_what_nothing_needs(tmp_path: Path) -> None:
    models = tmp_path / "models"
    files = _lay_out(models, tmp_path)
    with ServerProcess(tmp_path / "server", env={"HOMEPORT_MODELS": str(models)}) as server:
        names = {m["name"] for m in httpx.get(server.url + "/api/tags").json()["models"]}
        answer = httpx.post(server.url + "/api/generate", timeout=60, json={
            "model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 2}})
        assert "store tidied: removed 1 unused layer(s), 2 stale partial download file(s), " \
               "3 leftover temporary file(s)" in server.log()
    assert "tiny:latest" in names
    assert answer.status_code == 200, answer.text
    assert {key for key, path in files.items() if not path.exists()} == GONE


@pytest.mark.parametrize("variable", ["OLLAMA_NOPRUNE", "HOMEPORT_NOPRUNE"])
def test_noprune_keeps_everything(tmp_path: Path, variable: str) -> None:
    models = tmp_path / "models"
    files = _lay_out(models, tmp_path)
    with ServerProcess(tmp_path / "server", env={"HOMEPORT_MODELS": str(models), variable: "1"}):
        pass
    assert all(path.exists() for path in files.values())


def test_an_unreadable_manifest_keeps_every_layer(tmp_path: Path) -> None:
    models = tmp_path / "models"
    files = _lay_out(models, tmp_path)
    _aged(models / "manifests/registry.ollama.ai/library/broken/latest", b"{not json", HOUR)
    report = prune(ModelStore(models))
    assert files["unused_old"].exists()
    assert report.layers == 0
    assert report.leftovers == 3  # crash leftovers are not layers: they still go


def test_a_partial_whose_blob_is_complete_goes_at_once(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    data = b"finished layer"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    finished = _blob(store.blobs_dir, data, 10.0)
    leftover = _aged(partial_path(store.blobs_dir, digest), data, 10.0)
    with store.hold([digest]):  # a pull still running holds its layer: it is not unused
        prune(store, now=time.time() + 2 * HOUR)
    assert finished.exists()
    assert not leftover.exists()


def test_a_manifest_under_a_name_homeport_refuses_still_keeps_its_layers(tmp_path: Path) -> None:
    """Another tool (Ollama) may have written names outside homeport's grammar: their layers are
    in use all the same."""
    models = tmp_path / "models"
    store = ModelStore(models)
    data = b"a layer only the odd model uses"
    layer = _blob(store.blobs_dir, data, 2 * HOUR)
    config = _blob(store.blobs_dir, b"{}", 2 * HOUR)
    manifest = {
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest(), "size": 2},
        "layers": [{"mediaType": "application/vnd.ollama.image.model",
                    "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}]}
    odd = models / "manifests/registry.ollama.ai/ns.with.dots/odd/latest"
    odd.parent.mkdir(parents=True)
    odd.write_text(json.dumps(manifest))
    assert prune(store).layers == 0
    assert layer.exists()
    assert config.exists()
