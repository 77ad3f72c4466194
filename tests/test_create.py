"""Importing local files: blob upload (HEAD/POST /api/blobs/:digest) and /api/create from a blob or
an existing model, through the official ``ollama`` client; every broken GGUF is a clear 400."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.conftest import DETERMINISTIC, MODEL
from tests.support.files import blob_names, snapshot
from tests.support.gguf_files import bad_gguf_files, write_tiny_llama
from tests.support.server import ServerProcess

JINJA = ("{% for m in messages %}[{{ m['role'] }}] " + "=" * 100 +
         " {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("create-server")


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[ServerProcess]:
    env = {"HOMEPORT_MODELS": str(home / "models"), "HOMEPORT_CONTEXT_LENGTH": "512"}
    with ServerProcess(home, env=env) as server:
        yield server


@pytest.fixture
def client(server: ServerProcess) -> ollama.Client:
    return ollama.Client(host=server.url)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf", seed=30)


def sha256(path: Path) -> str:
    return f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"


def test_blob_upload_head_and_post(server: ServerProcess, tiny: Path, home: Path) -> None:
    digest = sha256(tiny)
    url = f"{server.url}/api/blobs/{digest}"
    assert httpx.head(url).status_code == 404
    assert httpx.post(url, content=tiny.read_bytes()).status_code == 201
    assert httpx.head(url).status_code == 200
    assert httpx.post(url, content=tiny.read_bytes()).status_code == 200
    stored = home / "models" / "blobs" / f"sha256-{digest[7:]}"
    assert stored.read_bytes() == tiny.read_bytes()

    wrong = f"{server.url}/api/blobs/sha256:{'0' * 64}"
    response = httpx.post(wrong, content=b"not those bytes")
    assert response.status_code == 400
    assert "digest mismatch" in response.json()["error"]
    assert httpx.head(wrong).status_code == 404
    assert not [name for name in blob_names(home / "models") if ".upload-" in name]


def test_a_blob_the_store_has_is_taken_again_on_a_full_disk(tmp_path: Path, tiny: Path) -> None:
    """Sending a blob again needs no disk space: 200 on a disk where any new blob gets 507."""
    wrapper = ("unshare", "--user", "--map-root-user", "--mount")
    if subprocess.run([*wrapper, "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a mount namespace here for a small disk")
    digest = sha256(tiny)
    models = tmp_path / "models"
    models.mkdir()
    # The server's store is a 64 MiB tmpfs (less than the 256 MiB reserve) holding the blob.
    small_disk = ('mount -t tmpfs -o size=64m tmpfs "$0" && mkdir "$0/blobs" && '
                  'cp "$1" "$0/blobs/$2" && shift 2 && exec "$@"')
    wrapper += ("sh", "-c", small_disk, str(models), str(tiny), f"sha256-{digest[7:]}")
    with ServerProcess(tmp_path / "server", env={"HOMEPORT_MODELS": str(models)},
                       wrapper=wrapper) as server:
        url = f"{server.url}/api/blobs/{digest}"
        assert httpx.head(url).status_code == 200
        assert httpx.post(url, content=tiny.read_bytes()).status_code == 200
        new = b"bytes the store lacks"
        refused = httpx.post(f"{server.url}/api/blobs/sha256:{hashlib.sha256(new).hexdigest()}",
                             content=new)
        assert refused.status_code == 507
        assert "not enough disk space" in refused.json()["error"]


def test_create_from_a_blob_with_every_modelfile_setting(
        client: ollama.Client, server: ServerProcess, tiny: Path, home: Path) -> None:
    digest = client.create_blob(tiny)
    progress = list(client.create(
        "tiny-made:v1", files={"tiny.gguf": digest}, template=JINJA, system="Be brief.",
        parameters={"temperature": 0.3, "num_ctx": 256, "stop": ["[user]"]},
        license="MIT, for testing", messages=[{"role": "user", "content": "earlier"},
                                              {"role": "assistant", "content": "noted"}],
        stream=True))
    statuses = [line.status for line in progress]
    assert statuses[0] == "parsing GGUF"
    assert f"using existing layer {digest}" in statuses
    assert statuses[-2:] == ["writing manifest", "success"]

    info = client.show("tiny-made:v1")
    assert info.template == JINJA
    assert info.license == "MIT, for testing"
    assert "num_ctx" in (info.parameters or "")
    assert "stop" in (info.parameters or "")
    assert info.modelfile is not None
    assert 'SYSTEM """Be brief."""' in info.modelfile
    assert info.details is not None
    assert info.details.family == "llama"
    assert info.details.quantization_level == "F32"
    raw = httpx.post(f"{server.url}/api/show", json={"model": "tiny-made:v1"}).json()
    assert raw["system"] == "Be brief."
    assert [message["content"] for message in raw["messages"]] == ["earlier", "noted"]

    manifest = json.loads((home / "models" / "manifests" / "registry.ollama.ai" / "library" /
                           "tiny-made" / "v1").read_bytes())
    kinds = sorted(layer["mediaType"].rsplit(".", 1)[1] for layer in manifest["layers"])
    assert kinds == ["license", "messages", "model", "params", "system", "template"]
    listed = {model.model: model for model in client.list().models}
    assert listed["tiny-made:v1"].size == manifest["config"]["size"] + sum(
        layer["size"] for layer in manifest["layers"])


def test_a_created_jinja_template_is_the_one_the_engine_renders(client: ollama.Client,
                                                                tiny: Path) -> None:
    digest = client.create_blob(tiny)
    client.create("tiny-plain", files={"tiny.gguf": digest})
    client.create("tiny-jinja", files={"tiny.gguf": digest}, template=JINJA)
    client.create("tiny-jinja-short", files={"tiny.gguf": digest},
                  template=JINJA.replace("=" * 100, "=" * 10))
    # generate renders the prompt through the chat template too; its context is every token
    # the model saw (the prompt, then one generated), whatever the prefix cache held.
    seen = {name: len(client.generate(name, prompt="hi", options={"num_predict": 1}).context
                      or [])
            for name in ("tiny-plain", "tiny-jinja", "tiny-jinja-short")}
    # The tokenizer is byte-level: ninety more "=" in the template are ninety more tokens.
    assert seen["tiny-jinja"] - seen["tiny-jinja-short"] == 90
    assert seen["tiny-plain"] not in (seen["tiny-jinja"], seen["tiny-jinja-short"])


def test_a_go_template_is_kept_and_shown_but_the_gguf_template_renders(
        client: ollama.Client, tiny: Path) -> None:
    digest = client.create_blob(tiny)
    go_template = "{{ if .System }}{{ .System }}{{ end }}{{ .Prompt }}"
    client.create("tiny-go", files={"tiny.gguf": digest}, template=go_template)
    assert client.show("tiny-go").template == go_template
    greedy = {"num_predict": 1, "temperature": 0}
    reply = client.generate("tiny-go", prompt="hi", options=greedy)
    plain = client.generate("tiny-plain", prompt="hi", options=greedy)
    assert reply.context == plain.context  # the same prompt tokens: the GGUF's template


def test_create_from_an_existing_model_keeps_its_file(client: ollama.Client, home: Path) -> None:
    client.create("pirate", from_=MODEL, system="You are a pirate.",
                  parameters={"temperature": 0})
    info = client.show("pirate")
    assert 'SYSTEM """You are a pirate."""' in (info.modelfile or "")
    assert info.details is not None
    assert info.details.family == "llama"
    reply = client.chat("pirate", messages=[{"role": "user", "content": "Hello"}],
                        options=DETERMINISTIC)
    assert reply.message.content.strip()
    client.delete("pirate")
    # The bundled model is untouched and still answers.
    assert client.chat(MODEL, messages=[{"role": "user", "content": "Hi"}],
                       options=DETERMINISTIC).message.content


def test_replacing_a_created_model_removes_its_old_unused_layers(client: ollama.Client,
                                                                tiny: Path, home: Path) -> None:
    digest = client.create_blob(tiny)
    client.create("tiny-sys", files={"tiny.gguf": digest}, system="first system prompt")
    first = "sha256-" + hashlib.sha256(b"first system prompt").hexdigest()
    assert first in blob_names(home / "models")
    statuses = [line.status for line in client.create(
        "tiny-sys", files={"tiny.gguf": digest}, system="second system prompt", stream=True)]
    assert "removing unused layers" in statuses
    assert first not in blob_names(home / "models")
    assert f"sha256-{digest[7:]}" in blob_names(home / "models")  # the model file is in use


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return bad_gguf_files(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("kind", ["four-bytes", "truncated", "tensor-offset-past-end",
                                  "string-length-2^63", "huge-key-count", "not-gguf"])
def test_a_broken_gguf_is_a_clear_400_and_no_model(client: ollama.Client, server: ServerProcess,
                                                   bad_files: dict[str, Path], home: Path,
                                                   kind: str) -> None:
    digest = client.create_blob(bad_files[kind])  # any bytes may be uploaded...
    manifests_before = snapshot(home / "models" / "manifests")
    with pytest.raises(ollama.ResponseError) as failure:  # ...but not made a model
        client.create(f"broken-{kind.replace('^', '')}", files={"model.gguf": digest})
    assert failure.value.status_code == 400
    assert failure.value.error.startswith("invalid GGUF file")
    assert str(home) not in failure.value.error
    assert snapshot(home / "models" / "manifests") == manifests_before
    assert httpx.get(f"{server.url}/api/version").status_code == 200


@pytest.mark.parametrize(("fields", "status", "error"), [
    ({}, 400, "neither 'from' or 'files' was specified"),
    ({"files": {"m.gguf": "sha256:" + "1" * 64}}, 400, "not found; upload it first"),
    ({"files": {"/etc/m.gguf": "sha256:" + "1" * 64}}, 400, "file path must be relative"),
    ({"files": {"m.safetensors": "sha256:" + "1" * 64}}, 400, "convert"),
    ({"from": MODEL, "quantize": "q4_K_M"}, 400, "quantization is not supported"),
    ({"from": MODEL, "template": "{% for m in messages %}"}, 400, "chat template"),
    ({"from": MODEL, "parameters": {"num_ctx": "big"}}, 400, 'option "num_ctx" must be'),
    ({"from": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400, "message role"),
    ({"from": "no-such-model"}, 404, "not found"),
    ({"modelfile": "FROM smollm2:135m"}, 400, "no longer part of the API"),
])
def test_create_errors(server: ServerProcess, fields: dict[str, object], status: int,
                       error: str) -> None:
    response = httpx.post(f"{server.url}/api/create", json={"model": "oops", **fields})
    assert response.status_code == status
    assert error in response.json()["error"]
