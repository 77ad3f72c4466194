"""The store's rules as pure functions: names, digests, the redirect and realm policy, Modelfiles,
template kinds and GGUF validation. Fast; the same rules are exercised end to end elsewhere."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
from pathlib import Path

import httpx
import pytest

from homeport.errors import (
    BadRequestError,
    InvalidModelFileError,
    ModelNotFoundError,
    RegistryRefusedError,
)
from homeport.store.bundled import BundledModel
from homeport.store.create import CreateSpec, create_model
from homeport.store.digests import blob_path, normalize_digest, partial_path, sha256_file
from homeport.store.gguf import parse_gguf
from homeport.store.modelfile import ModelfileError, parse_modelfile
from homeport.store.names import parse_name
from homeport.store.netpolicy import check_realm, check_redirect, is_public_address
from homeport.store.record import ModelRecord, is_jinja_template
from homeport.store.registry import RegistryClient
from homeport.store.store import ModelStore
from tests.support.gguf_files import gguf_bytes, write_tiny_llama


@pytest.mark.parametrize(("text", "full"), [
    ("mistral", "registry.ollama.ai/library/mistral:latest"),
    ("mistral:7b", "registry.ollama.ai/library/mistral:7b"),
    ("user/model:tag", "registry.ollama.ai/user/model:tag"),
    ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
     "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"),
    ("127.0.0.1:5000/library/tiny", "127.0.0.1:5000/library/tiny:latest"),
])
def test_names_fill_ollamas_defaults(text: str, full: str) -> None:
    assert str(parse_name(text)) == full


@pytest.mark.parametrize("text", [
    "", "../etc/passwd", "a/../b", "model:..", "host/ns.with.dot/model", "-leading", "a b",
    "x" * 81, "ftp://host/ns/model", "model:tag:extra/more", "name/", ".hidden",
])
def test_invalid_names_are_refused_without_paths(text: str) -> None:
    with pytest.raises(BadRequestError, match=r"^invalid model name$"):
        parse_name(text)


def test_local_lookup_ignores_case(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    from homeport.store import manifests as mf

    config = store.write_blob(b"{}")
    manifest = mf.Manifest(
        schemaVersion=2, config=mf.Layer(mediaType=mf.CONFIG_MEDIA_TYPE, digest=config, size=2),
        layers=[mf.Layer(mediaType=mf.MODEL_LAYER, digest=config, size=2)])
    store.write_manifest(parse_name("Mixed/Case:Tag"), manifest.to_bytes())
    assert store.stored_name(parse_name("mixed/case:tag")).display == "Mixed/Case:Tag"
    assert store.resolve("MIXED/case:TAG").name.display == "Mixed/Case:Tag"


def _manifest_bytes(store: ModelStore, config: bytes) -> bytes:
    from homeport.store import manifests as mf

    digest = store.write_blob(config)
    return mf.Manifest(
        schemaVersion=2,
        config=mf.Layer(mediaType=mf.CONFIG_MEDIA_TYPE, digest=digest, size=len(config)),
        layers=[mf.Layer(mediaType=mf.MODEL_LAYER, digest=digest, size=len(config))],
    ).to_bytes()


def _manifest_files(store: ModelStore) -> list[str]:
    base = store.primary.manifests
    return sorted(str(path.relative_to(base)) for path in base.rglob("*") if path.is_file())


def test_a_manifest_written_in_another_spelling_replaces_the_stored_one(tmp_path: Path) -> None:
    """The case-insensitive lookup is part of the write, under the store's lock, so no two
    writers (a create of "Foo" and one of "foo") can leave two manifests for one model."""
    store = ModelStore(tmp_path / "models")
    first, second = _manifest_bytes(store, b"{}"), _manifest_bytes(store, b"{ }")
    store.write_manifest(parse_name("Mixed/Case:Tag"), first)
    unused = store.write_manifest(parse_name("mixed/case:TAG"), second)
    assert _manifest_files(store) == ["registry.ollama.ai/Mixed/Case/Tag"]
    assert store.resolve("mixed/case:tag").manifest.to_bytes() == second
    assert unused == {f"sha256:{hashlib.sha256(b'{}').hexdigest()}"}


def test_the_bundled_model_never_replaces_a_model_of_its_name(tmp_path: Path) -> None:
    gguf = write_tiny_llama(tmp_path / "tiny.gguf")
    bundled = BundledModel("smollm2:135m", gguf, sha256_file(gguf), gguf.stat().st_size)
    store = ModelStore(tmp_path / "models", bundled=[bundled])
    mine = _manifest_bytes(store, b"{}")
    store.write_manifest(parse_name("SmolLM2:135M"), mine)
    store.ensure_bundled()
    assert _manifest_files(store) == ["registry.ollama.ai/library/SmolLM2/135M"]
    assert store.resolve("smollm2:135m").manifest.to_bytes() == mine


def test_a_base_model_deleted_while_a_create_reads_it_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A DELETE of the base landing between create's read of it and its hold on the layers: the
    create fails as if the base were gone, and leaves no manifest naming a missing file."""
    store = ModelStore(tmp_path / "models")
    digest = store.write_blob(write_tiny_llama(tmp_path / "tiny.gguf").read_bytes())
    list(create_model(store, CreateSpec(model="base", files={"tiny.gguf": digest})))
    resolve = store.resolve

    def resolve_then_delete(text: str) -> ModelRecord:
        record = resolve(text)
        store.delete(text)
        return record

    monkeypatch.setattr(store, "resolve", resolve_then_delete)
    with pytest.raises(ModelNotFoundError, match="model 'base' not found"):
        list(create_model(store, CreateSpec(model="derived", from_="base", system="Be brief.")))
    assert _manifest_files(store) == []
    assert not store.has_blob(digest)


@pytest.mark.parametrize("digest", [
    "sha256:../../etc/passwd", "sha256:" + "a" * 63, "sha256:" + "a" * 65, "sha512:" + "a" * 64,
    "sha256:" + "g" * 64, "sha256-" + "a" * 63 + "/", "", "sha256:" + "a" * 64 + "\n",
])
def test_only_sha256_hex_digests_become_paths(digest: str, tmp_path: Path) -> None:
    with pytest.raises(BadRequestError, match="invalid digest format"):
        blob_path(tmp_path, digest)
    with pytest.raises(BadRequestError):
        partial_path(tmp_path, digest)


def test_a_digest_names_one_file_inside_the_blobs_folder(tmp_path: Path) -> None:
    upper = "sha256:" + "AB" * 32
    assert normalize_digest(upper) == "sha256:" + "ab" * 32
    path = blob_path(tmp_path, upper)
    assert path.parent == tmp_path
    assert path.name == "sha256-" + "ab" * 32
    assert partial_path(tmp_path, upper).name == path.name + ".partial"


@pytest.mark.parametrize(("address", "public"), [
    ("93.184.216.34", True), ("2606:4700::6810:84e5", True), ("127.0.0.1", False),
    ("10.1.2.3", False), ("192.168.1.1", False), ("172.16.0.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("::1", False), ("fe80::1", False),
    ("fd00::1", False), ("::ffff:127.0.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
])
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


REGISTRY = httpx.URL("https://registry.example:5000")


@pytest.mark.parametrize(("target", "blob", "allowed"), [
    ("https://registry.example:5000/v2/other", False, True),  # its own origin
    ("https://93.184.216.34/blob", True, True),  # a public storage host, for a blob
    ("https://93.184.216.34/blob", False, False),  # ...but not for a manifest
    ("https://127.0.0.1:8080/blob", True, False),
    ("https://registry.example:6000/blob", True, False),  # same host, another port: not it
    ("https://169.254.169.254/latest", True, False),
    ("https://[::1]/blob", True, False),
    ("http://93.184.216.34/blob", True, False),  # https downgraded to http
    ("file:///etc/passwd", True, False),
])
def test_redirect_policy(target: str, blob: bool, allowed: bool) -> None:
    check = check_redirect(REGISTRY, httpx.URL(target), insecure=False, other_hosts=blob)
    if allowed:
        asyncio.run(check)
    else:
        with pytest.raises(RegistryRefusedError):
            asyncio.run(check)


def test_connections_check_the_address_they_connect_to() -> None:
    """The connection-time half of the redirect rule, through the registry client's own httpx
    client: a storage host whose name resolves to loopback (what DNS rebinding would answer
    after the redirect was checked) gets no connection; the registry itself, on loopback, does."""
    accepted: list[object] = []

    async def scenario() -> None:
        listener = await asyncio.start_server(lambda r, w: (accepted.append(r), w.close()),
                                              "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        async with RegistryClient(parse_name(f"127.0.0.1:{port}/library/tiny"),
                                  insecure=True) as client:
            with pytest.raises(RegistryRefusedError, match="now resolves to"):
                await client._http.get(f"http://localhost:{port}/blob")
            assert accepted == []
            with pytest.raises(httpx.RemoteProtocolError):  # connected; the listener hung up
                await client._http.get(f"http://127.0.0.1:{port}/v2/")
        listener.close()
        await listener.wait_closed()

    asyncio.run(scenario())
    assert len(accepted) == 1


def test_realm_policy() -> None:
    assert check_realm(REGISTRY, "https://registry.example:5000/token", False).path == "/token"
    for realm in ("https://auth.example/token", "https://registry.example/token",
                  "https://registry.example:5001/token", "http://registry.example:5000/t",
                  "not a url", ""):
        with pytest.raises(RegistryRefusedError):
            check_realm(REGISTRY, realm, False)


def test_modelfile_instructions() -> None:
    parsed = parse_modelfile(
        '# comment\nfrom ./model.gguf\nPARAMETER temperature 0.7\nPARAMETER num_ctx 4096\n'
        'PARAMETER stop "<|im_end|>"\nPARAMETER stop <eos>\nPARAMETER use_mmap false\n'
        'SYSTEM """line one\n  line two"""\nTEMPLATE "{{ .Prompt }}"\n'
        'MESSAGE user "say \\"hi\\""\nMESSAGE assistant hi\nLICENSE """MIT"""\nLICENSE Apache\n'
        'Draft ./small.gguf\n')
    assert parsed.from_ == "./model.gguf"
    assert parsed.draft == "./small.gguf"
    assert parsed.parameters == {"temperature": 0.7, "num_ctx": 4096, "use_mmap": False,
                                 "stop": ["<|im_end|>", "<eos>"]}
    assert parsed.system == "line one\n  line two"
    assert parsed.template == "{{ .Prompt }}"
    assert parsed.messages == [{"role": "user", "content": 'say "hi"'},
                               {"role": "assistant", "content": "hi"}]
    assert parsed.license == ["MIT", "Apache"]


@pytest.mark.parametrize(("text", "error"), [
    ("PARAMETER temperature 1\n", "no FROM"),
    ("FROM a\nFROM b\n", "line 2: more than one FROM"),
    ("FROM a\nSYSTEM \"\"\"never closed\n", 'line 2: unterminated """'),
    ("FROM a\n\nMESSAGE wizard hi\n", "line 3: message role"),
    ("FROM a\nQUANTIZE q4\n", "line 2: unknown instruction 'QUANTIZE'"),
    ("FROM a\nDRAFT ./b.gguf\nDRAFT ./c.gguf\n", "line 3: more than one DRAFT"),
    ("FROM a\nDRAFT\n", "line 2: DRAFT needs a path"),
])
def test_modelfile_errors_name_the_line(text: str, error: str) -> None:
    with pytest.raises(ModelfileError, match=error):
        parse_modelfile(text)


@pytest.mark.parametrize(("template", "jinja"), [
    ("{% for message in messages %}{{ message['content'] }}{% endfor %}", True),
    ("{{ bos_token }}{{ messages[0]['content'] }}", True),
    ("{{ .Prompt }}", False),
    ("{{- if .System }}{{ .System }}{{ end }}{{ .Prompt }}", False),
    ("{{ range .Messages }}{{ .Content }}{{ end }}", False),
    ("plain text", False),
])
def test_template_kinds(template: str, jinja: bool) -> None:
    assert is_jinja_template(template) is jinja


def test_gguf_refuses_a_tensor_named_twice() -> None:
    assert len(parse_gguf(gguf_bytes(tensor_names=(b"t", b"u"))).tensors) == 2
    with pytest.raises(InvalidModelFileError, match="tensor 't' appears twice"):
        parse_gguf(gguf_bytes(tensor_names=(b"t", b"t")))
