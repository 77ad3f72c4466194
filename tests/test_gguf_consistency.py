"""GGUFs whose hyperparameters contradict each other or their tensors (the kind that ends in a
GGML_ASSERT aborting the server inside llama.cpp) are refused from the header alone: at
/api/create, at ``homeport import``, and at a chat with a model already in the store. None of
these files is ever loaded with llama.cpp, in this process or the server's."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gguf
import httpx
import ollama
import pytest

from homeport.errors import InvalidModelFileError
from homeport.store.gguf import read_gguf
from tests.conftest import MODEL
from tests.support.files import snapshot
from tests.support.gguf_files import add_llama_tensors, write_out, zeros
from tests.support.models import bundled_gguf, install_model
from tests.support.server import ServerProcess, isolated_env

N_EMBD, N_HEAD, N_LAYER, N_FF, N_VOCAB = 32, 2, 2, 64, 16


def crafted_llama(path: Path, **metadata: int) -> Path:
    """A tiny llama (two heads of 16, two layers) whose header says ``metadata`` (uint32 keys
    without the "llama." prefix) on top of, or instead of, what its tensors say."""
    header = {"context_length": 128, "embedding_length": N_EMBD, "block_count": N_LAYER,
              "feed_forward_length": N_FF, "attention.head_count": N_HEAD,
              "attention.head_count_kv": N_HEAD, "rope.dimension_count": N_EMBD // N_HEAD}
    header.update(metadata)
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in header.items():
        writer.add_uint32(f"llama.{key}", value)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"<0x{i:02X}>" for i in range(N_VOCAB)])
    writer.add_token_scores([0.0] * N_VOCAB)
    writer.add_token_types([gguf.TokenType.BYTE] * N_VOCAB)
    add_llama_tensors(writer, zeros, n_vocab=N_VOCAB, n_embd=N_EMBD, n_ff=N_FF, n_layer=N_LAYER)
    write_out(writer)
    return path


# Each crafted file: what its header claims, and the words the refusal must contain.
CRAFTED: dict[str, tuple[dict[str, int], str]] = {
    "heads-not-a-multiple": ({"attention.head_count": 3},
                             "llama.attention.head_count (3) is not a multiple of "
                             "llama.attention.head_count_kv (2)"),
    "zero-kv-heads": ({"attention.head_count_kv": 0},
                      "llama.attention.head_count_kv is 0 but llama.attention.head_count is 2"),
    "zero-heads": ({"attention.head_count": 0},
                   "llama.attention.head_count is 0 but llama.attention.head_count_kv is 2"),
    "more-experts-used-than-exist": ({"expert_count": 2, "expert_used_count": 3},
                                     "llama.expert_used_count (3) is more than "
                                     "llama.expert_count (2)"),
    "experts-used-without-experts": ({"expert_used_count": 2},
                                     "llama.expert_used_count (2) is more than "
                                     "llama.expert_count (0)"),
    "experts-none-used": ({"expert_count": 4}, "llama.expert_used_count is 0"),
    "key-length-against-attn-k": ({"attention.key_length": 24},
                                  "blk.0.attn_k.weight has 32 outputs"),
    "value-length-against-attn-v": ({"attention.value_length": 8},
                                    "blk.0.attn_v.weight has 32 outputs"),
    "heads-against-embedding": ({"embedding_length": 48}, "blk.0.attn_k.weight"),
    "rope-wider-than-a-head": ({"rope.dimension_count": 64},
                               "llama.rope.dimension_count (64) is more than the key length"),
    "missing-layer": ({"block_count": 3}, "llama.block_count is 3 but layer 2 has no tensors"),
    "layer-past-block-count": ({"block_count": 1},
                               "tensors of layer 1 but llama.block_count is 1"),
}


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("crafted")
    return {kind: crafted_llama(folder / f"{kind}.gguf", **metadata)
            for kind, (metadata, _) in CRAFTED.items()}


def test_the_untouched_files_pass(tmp_path: Path) -> None:
    """The checks refuse only contradictions: the bundled model and a consistent tiny one pass."""
    assert read_gguf(bundled_gguf()).block_count > 0
    assert read_gguf(crafted_llama(tmp_path / "fine.gguf")).block_count == N_LAYER
    with_experts = crafted_llama(tmp_path / "experts.gguf", expert_count=4, expert_used_count=2)
    assert read_gguf(with_experts).arch_value("expert_used_count") == 2


@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_each_contradiction_is_named(crafted: dict[str, Path], kind: str) -> None:
    # read_gguf is pure Python: it only parses the header, never hands the file to llama.cpp
    with pytest.raises(InvalidModelFileError) as refused:
        read_gguf(crafted[kind])
    assert refused.value.message.startswith("invalid GGUF file: ")
    assert CRAFTED[kind][1] in refused.value.message


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, crafted: dict[str, Path]
           ) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("consistency-server")
    # Already in the store, as if copied there by hand: refused when a chat would load it.
    install_model(home / "models", "stored-bad-heads:latest", crafted["heads-not-a-multiple"])
    env = {"HOMEPORT_MODELS": str(home / "models"), "HOMEPORT_CONTEXT_LENGTH": "256"}
    with ServerProcess(home, env=env) as process:
        yield process


def _still_serving(server: ServerProcess) -> None:
    reply = httpx.post(f"{server.url}/api/chat", timeout=120, json={
        "model": MODEL, "stream": False, "messages": [{"role": "user", "content": "hi"}],
        "options": {"temperature": 0, "num_predict": 4}})
    assert reply.status_code == 200, reply.text
    assert reply.json()["done"] is True


@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_create_refuses_it_with_a_400(server: ServerProcess, crafted: dict[str, Path],
                                      kind: str) -> None:
    client = ollama.Client(host=server.url)
    digest = client.create_blob(crafted[kind])
    manifests_before = snapshot(server.home / "models" / "manifests")
    with pytest.raises(ollama.ResponseError) as refused:
        client.create(f"crafted-{kind}", files={"model.gguf": digest})
    assert refused.value.status_code == 400
    assert refused.value.error.startswith("invalid GGUF file: ")
    assert CRAFTED[kind][1] in refused.value.error
    assert snapshot(server.home / "models" / "manifests") == manifests_before
    assert httpx.get(f"{server.url}/api/version").status_code == 200


def test_import_refuses_it_in_one_line(server: ServerProcess, crafted: dict[str, Path]) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "homeport", "import", str(crafted["more-experts-used-than-exist"]),
         "--name", "imported-experts", "--endpoint", server.url],
        env=isolated_env(server.home / "cli"), capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL)
    assert refused.returncode == 1
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: invalid GGUF file: ")
    assert CRAFTED["more-experts-used-than-exist"][1] in last
    assert "Traceback" not in refused.stderr
    _still_serving(server)


def test_a_chat_with_a_stored_one_is_a_400_and_the_server_serves_on(
        server: ServerProcess) -> None:
    for _ in range(2):  # refused every time, not loaded the second
        reply = httpx.post(f"{server.url}/api/chat", timeout=120, json={
            "model": "stored-bad-heads", "stream": False,
            "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 400, reply.text
        assert CRAFTED["heads-not-a-multiple"][1] in reply.json()["error"]
    loaded = [m["name"] for m in httpx.get(f"{server.url}/api/ps").json()["models"]]
    assert "stored-bad-heads:latest" not in loaded
    _still_serving(server)
    assert server.alive()
