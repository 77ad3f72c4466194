"""Where models live: HOMEPORT_MODELS, then OLLAMA_MODELS, then the data dir; and models in an
existing Ollama store, listed and served in place without a byte of it copied or changed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import ollama
import pytest

from homeport import config
from tests.support.files import snapshot
from tests.support.gguf_files import write_tiny_llama
from tests.support.server import ServerProcess


def test_the_writable_root_comes_from_homeport_models_then_ollama_models(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.models_dir() == tmp_path / "data" / "models"  # the autouse fixture's data dir
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    assert config.models_dir() == tmp_path / "ollama"
    monkeypatch.setenv("HOMEPORT_MODELS", str(tmp_path / "homeport"))
    assert config.models_dir() == tmp_path / "homeport"


def ollama_store(root: Path, gguf: Path) -> str:
    """Lay a model out exactly as ``ollama pull`` leaves it; return its manifest's digest."""
    blobs = root / "blobs"
    blobs.mkdir(parents=True)
    layers = []
    for media_type, data in (("model", gguf.read_bytes()), ("template", b"{{ .Prompt }}")):
        digest = hashlib.sha256(data).hexdigest()
        (blobs / f"sha256-{digest}").write_bytes(data)
        layers.append({"mediaType": f"application/vnd.ollama.image.{media_type}",
                       "digest": f"sha256:{digest}", "size": len(data)})
    config_bytes = json.dumps({"model_format": "gguf", "model_family": "llama",
                               "file_type": "F32"}).encode()
    config_digest = hashlib.sha256(config_bytes).hexdigest()
    (blobs / f"sha256-{config_digest}").write_bytes(config_bytes)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": f"sha256:{config_digest}", "size": len(config_bytes)},
        "layers": layers}).encode()
    path = root / "manifests" / "registry.ollama.ai" / "library" / "from-ollama" / "latest"
    path.parent.mkdir(parents=True)
    path.write_bytes(manifest)
    return hashlib.sha256(manifest).hexdigest()


def test_an_ollama_store_is_served_in_place_and_never_changed(tmp_path: Path) -> None:
    theirs = tmp_path / "dot-ollama" / "models"
    digest = ollama_store(theirs, write_tiny_llama(tmp_path / "tiny.gguf", seed=50))
    before = snapshot(theirs)
    ours = tmp_path / "ours"
    env = {"OLLAMA_MODELS": str(ours), "HOMEPORT_EXTRA_STORES": str(theirs)}
    with ServerProcess(tmp_path / "server", env=env) as server:
        client = ollama.Client(host=server.url)
        listed = {model.model: model for model in client.list().models}
        assert listed["from-ollama:latest"].digest == digest
        reply = client.generate("From-Ollama", prompt="hi", options={"num_predict": 2})
        assert reply.done
        refused = httpx.request("DELETE", f"{server.url}/api/delete",
                                json={"model": "from-ollama"})
        assert refused.status_code == 400
        assert "ollama rm" in refused.json()["error"]
        # A model made from it lives in our store (OLLAMA_MODELS here), theirs is untouched.
        client.create("derived", from_="from-ollama", system="Be brief.")
        client.delete("derived")
        assert "from-ollama:latest" in {model.model for model in client.list().models}
    assert snapshot(theirs) == before
    assert (ours / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "135m").is_file()
