"""A draft model for speculative decoding, up to the engine: Ollama's ``DRAFT`` (``draft_files``
in a create request, a ``draft`` layer in the manifest) through a real server, and
``ModelRecord.draft_path``, which the engine reads. The pinned ``ollama`` client's ``create`` has no
``draft_files``, so create requests go over the wire with httpx; blobs go up through the client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from homeport.store import manifests as mf
from homeport.store.digests import blob_path
from homeport.store.prune import prune
from homeport.store.store import ModelStore
from tests.conftest import MODEL
from tests.support.files import snapshot
from tests.support.gguf_files import bad_gguf_files, gguf_bytes, write_tiny_llama
from tests.support.models import GEMMA, WITH_GEMMA, bundled_gguf
from tests.support.registry import DockerRegistry
from tests.support.server import ServerProcess

LATER = 2 * 3600.0  # past prune's hour of grace for a layer nothing uses


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("draft-server")


@pytest.fixture(scope="module")
def models(home: Path) -> Path:
    return home / "models"


@pytest.fixture(scope="module")
def server(home: Path, models: Path) -> Iterator[ServerProcess]:
    env = {"HOMEPORT_MODELS": str(models), "HOMEPORT_CONTEXT_LENGTH": "512", **WITH_GEMMA}
    with ServerProcess(home, env=env) as server:
        yield server


@pytest.fixture
def client(server: ServerProcess) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=120)


def create(server: ServerProcess, model: str, **fields: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/api/create", timeout=120,
                      json={"model": model, "stream": False, **fields})


def manifest_of(models: Path, name: str, host: str = "registry.ollama.ai") -> dict[str, Any]:
    model, _, tag = name.partition(":")
    path = models / "manifests" / host / "library" / model / (tag or "latest")
    stored: dict[str, Any] = json.loads(path.read_bytes())
    return stored


def layers_of(manifest: dict[str, Any], media_type: str) -> list[dict[str, Any]]:
    return [layer for layer in manifest["layers"] if layer["mediaType"] == media_type]


def modelfile(client: ollama.Client, name: str) -> str:
    return client.show(name).modelfile or ""


def test_the_bundled_gguf_as_its_own_draft(client: ollama.Client, server: ServerProcess,
                                           models: Path) -> None:
    gguf = bundled_gguf()
    digest = client.create_blob(gguf)
    response = create(server, "smol-drafted", **{"from": MODEL},
                      draft_files={gguf.name: digest})
    assert response.status_code == 200, response.text

    stored = manifest_of(models, "smol-drafted")
    assert layers_of(stored, mf.DRAFT_LAYER) == [
        {"mediaType": mf.DRAFT_LAYER, "digest": digest, "size": gguf.stat().st_size}]
    blob = blob_path(models / "blobs", digest)
    assert f"\nDRAFT {blob.name}\n" in modelfile(client, "smol-drafted")
    assert "DRAFT" not in modelfile(client, MODEL)
    listed = {model.model: model for model in client.list().models}
    assert listed["smol-drafted:latest"].size == stored["config"]["size"] + sum(
        layer["size"] for layer in stored["layers"])

    store = ModelStore(models)
    assert store.resolve("smol-drafted").draft_path == blob  # what the engine will load
    assert store.resolve(MODEL).draft_path is None
    assert digest in store.used_digests()
    prune(store, now=time.time() + LATER)
    assert blob.is_file()


def test_a_draft_with_another_vocabulary_is_refused(server: ServerProcess, models: Path,
                                                    home: Path) -> None:
    # The server serves Gemma 3 270M too, so its GGUF is a blob it has (no upload needed).
    gemma = layers_of(manifest_of(models, GEMMA), mf.MODEL_LAYER)[0]["digest"]
    before = snapshot(models / "manifests")
    response = create(server, "mismatched", **{"from": MODEL},
                      draft_files={"gemma.gguf": gemma})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith("the draft model's vocabulary does not match the model's")
    assert "the draft has tokenizer 'llama' with 262144 tokens" in error
    assert "the model has tokenizer 'gpt2' with 49152 tokens" in error
    assert str(home) not in error
    assert snapshot(models / "manifests") == before


def test_copies_and_derived_models_keep_the_draft_and_the_last_user_removes_it(
        client: ollama.Client, server: ServerProcess, models: Path, tmp_path: Path) -> None:
    target = client.create_blob(write_tiny_llama(tmp_path / "target.gguf", seed=50))
    draft = client.create_blob(write_tiny_llama(tmp_path / "draft.gguf", seed=51))
    draft_blob = blob_path(models / "blobs", draft)
    response = create(server, "tiny-drafted", files={"target.gguf": target},
                      draft_files={"draft.gguf": draft})
    assert response.status_code == 200, response.text

    client.copy("tiny-drafted", "tiny-drafted-copy")
    assert f"\nDRAFT {draft_blob.name}\n" in modelfile(client, "tiny-drafted-copy")
    derived = create(server, "tiny-derived", **{"from": "tiny-drafted"}, system="Be brief.")
    assert derived.status_code == 200, derived.text
    assert f"\nDRAFT {draft_blob.name}\n" in modelfile(client, "tiny-derived")
    # A new draft replaces the base model's: one draft layer, the new one.
    redrafted = create(server, "tiny-redrafted", **{"from": "tiny-drafted"},
                       draft_files={"target.gguf": target})
    assert redrafted.status_code == 200, redrafted.text
    assert [layer["digest"] for layer in layers_of(
        manifest_of(models, "tiny-redrafted"), mf.DRAFT_LAYER)] == [target]

    store = ModelStore(models)
    assert draft in store.used_digests()
    prune(store, now=time.time() + LATER)
    assert draft_blob.is_file()
    for name in ("tiny-drafted", "tiny-drafted-copy", "tiny-redrafted"):
        client.delete(name)
        assert draft_blob.is_file()  # tiny-derived still uses it
    client.delete("tiny-derived")
    assert not draft_blob.exists()


UNKNOWN = "sha256:" + "1" * 64


@pytest.mark.parametrize(("fields", "error"), [
    ({"draft_files": {}}, "no files provided to create the draft model from"),
    ({"draft_files": {"a.gguf": UNKNOWN, "b.gguf": UNKNOWN}},
     "only one GGUF file per draft model"),
    ({"draft_files": {"/etc/d.gguf": UNKNOWN}}, "file path must be relative"),
    ({"draft_files": {"../d.gguf": UNKNOWN}}, "file path must be relative"),
    ({"draft_files": {"d.gguf": UNKNOWN}}, "not found; upload it first"),
    ({"draft_files": {"d.gguf": "sha256:nope"}}, "invalid digest format"),
    ({"draft_files": {"d.safetensors": UNKNOWN}}, "convert"),
    ({"draft_files": {"d.gguf": 7}}, "draft_files"),
    ({"draft_quantize": "q4_0"}, "quantization is not supported"),
])
def test_draft_request_errors(server: ServerProcess, fields: dict[str, object],
                              error: str) -> None:
    response = create(server, "oops", **{"from": MODEL}, **fields)
    assert response.status_code == 400
    assert error in response.json()["error"]


def test_a_draft_that_is_no_model_gguf_is_refused(client: ollama.Client, server: ServerProcess,
                                                  tmp_path: Path) -> None:
    broken = client.create_blob(bad_gguf_files(tmp_path)["truncated"])
    response = create(server, "oops", **{"from": MODEL}, draft_files={"d.gguf": broken})
    assert response.status_code == 400
    assert response.json()["error"].startswith("invalid GGUF file")
    (tmp_path / "bare.gguf").write_bytes(gguf_bytes())  # a valid GGUF, but no vocabulary
    bare = client.create_blob(tmp_path / "bare.gguf")
    response = create(server, "oops", **{"from": MODEL}, draft_files={"d.gguf": bare})
    assert response.status_code == 400
    assert response.json()["error"] == "the draft GGUF has no vocabulary (tokenizer.ggml.tokens)"


def test_a_pulled_model_brings_its_draft(client: ollama.Client, registry: DockerRegistry,
                                         models: Path, tmp_path: Path) -> None:
    target = write_tiny_llama(tmp_path / "target.gguf", seed=52)
    draft = write_tiny_llama(tmp_path / "draft.gguf", seed=53)
    pushed = registry.push_model("library/drafted", "v1", target, draft=draft)
    name = f"{registry.host}/library/drafted:v1"
    assert list(client.pull(name, insecure=True, stream=True))[-1].status == "success"
    draft_blob = blob_path(models / "blobs", pushed.digests["draft"])
    assert draft_blob.read_bytes() == draft.read_bytes()
    assert f"\nDRAFT {draft_blob.name}\n" in modelfile(client, name)
    assert ModelStore(models).resolve(name).draft_path == draft_blob
