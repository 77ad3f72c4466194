"""Reading and validating GGUF files before llama.cpp ever sees them.

A GGUF is untrusted input: four-byte files, tensor offsets past the end and string lengths of 2**63
have crashed servers or leaked their memory. ``read_gguf`` parses the header, every key/value pair
and every tensor record with bounds checked against the file size, and checks that each tensor's
data lies inside the file, then (``gguf_consistency``) that the hyperparameters agree with each
other and with the tensors. Anything wrong raises ``InvalidModelFileError`` with a message that names
the problem, never the path.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from homeport.errors import InvalidModelFileError
from homeport.store.gguf_consistency import check_consistency

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_KV_COUNT = 1 << 16
MAX_TENSOR_COUNT = 1 << 20
MAX_STRING_BYTES = 16 * 1024 * 1024
MAX_ARRAY_ITEMS = 1 << 26
MAX_DIMS = 4
KEEP_ARRAY_ITEMS = 64  # small arrays are kept in full; large ones (vocabularies) only counted

@cache
def _scalars() -> dict[int, tuple[str, int]]:
    """struct format and size of each scalar value type."""
    import gguf  # here, not at import: gguf brings numpy (~0.2 s), which a gateway never needs

    return {
        gguf.GGUFValueType.UINT8: ("<B", 1),
        gguf.GGUFValueType.INT8: ("<b", 1),
        gguf.GGUFValueType.UINT16: ("<H", 2),
        gguf.GGUFValueType.INT16: ("<h", 2),
        gguf.GGUFValueType.UINT32: ("<I", 4),
        gguf.GGUFValueType.INT32: ("<i", 4),
        gguf.GGUFValueType.FLOAT32: ("<f", 4),
        gguf.GGUFValueType.BOOL: ("<?", 1),
        gguf.GGUFValueType.UINT64: ("<Q", 8),
        gguf.GGUFValueType.INT64: ("<q", 8),
        gguf.GGUFValueType.FLOAT64: ("<d", 8),
    }


@dataclass(frozen=True)
class ArraySummary:
    """A long array (a vocabulary, say): its element type and length, not its items."""

    item_type: int
    count: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int
    nbytes: int


@dataclass
class GGUFInfo:
    """What homeport needs to know about a model file."""

    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo] = field(default_factory=list)
    file_size: int = 0

    @property
    def architecture(self) -> str:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else "unknown"

    def arch_value(self, key: str) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}")

    @property
    def context_length(self) -> int:
        value = self.arch_value("context_length")
        return int(value) if isinstance(value, int) and value > 0 else 2048

    @property
    def block_count(self) -> int:
        value = self.arch_value("block_count")
        return int(value) if isinstance(value, int) else 0

    @property
    def embedding_length(self) -> int:
        value = self.arch_value("embedding_length")
        return int(value) if isinstance(value, int) else 0

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) and value.strip() else None

    @property
    def parameter_count(self) -> int:
        count = 0
        for tensor in self.tensors:
            elements = 1
            for dim in tensor.shape:
                elements *= dim
            count += elements
        return count

    @property
    def parameter_size(self) -> str:
        return human_number(self.parameter_count)

    @property
    def quantization(self) -> str:
        import gguf

        file_type = self.metadata.get("general.file_type")
        if isinstance(file_type, int):
            try:
                return gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix(
                    "ALL_")
            except ValueError:
                return f"unknown({file_type})"
        return "unknown"

    @property
    def head_count(self) -> int:
        """Attention heads (1 where the file does not say)."""
        heads = self.arch_value("attention.head_count")
        return heads if isinstance(heads, int) and heads > 0 else 1

    def kv_cache_bytes_per_token(self) -> int:
        """Bytes of f16 K and V cache one token needs across all layers."""
        heads = self.head_count
        heads_kv = self.arch_value("attention.head_count_kv")
        heads_kv = heads_kv if isinstance(heads_kv, int) and heads_kv > 0 else heads
        head_dim = self.embedding_length // heads if self.embedding_length else 128
        key_len = self.arch_value("attention.key_length")
        value_len = self.arch_value("attention.value_length")
        key_len = key_len if isinstance(key_len, int) else head_dim
        value_len = value_len if isinstance(value_len, int) else head_dim
        return max(self.block_count, 1) * heads_kv * (key_len + value_len) * 2

    def model_info(self) -> dict[str, Any]:
        """Metadata as Ollama's /api/show model_info: scalars and short arrays, vocabularies elided."""
        info: dict[str, Any] = {}
        for key, value in self.metadata.items():
            if key == "tokenizer.chat_template":
                continue
            info[key] = None if isinstance(value, ArraySummary) else value
        info["general.parameter_count"] = self.parameter_count
        return info


def human_number(value: int) -> str:
    """Ollama's format.HumanNumber: 134515008 → "134.52M", 7000000000 → "7B"."""
    for size, suffix, decimals in ((10**9, "B", 1), (10**6, "M", 2)):
        if value >= size:
            number = value / size
            return f"{number:.0f}{suffix}" if number == int(number) else f"{number:.{decimals}f}{suffix}"
    if value >= 1000:
        return f"{value / 1000:.0f}K"
    return str(value)


class _Reader:
    """A bounds-checked cursor over the file's bytes."""

    def __init__(self, data: mmap.mmap | bytes) -> None:
        self.data = data
        self.pos = 0
        self.size = len(data)

    def take(self, count: int, what: str) -> bytes:
        if count < 0 or self.pos + count > self.size:
            raise InvalidModelFileError(f"invalid GGUF file: {what} runs past the end of the file")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return bytes(chunk)

    def skip(self, count: int, what: str) -> None:
        if count < 0 or self.pos + count > self.size:
            raise InvalidModelFileError(f"invalid GGUF file: {what} runs past the end of the file")
        self.pos += count

    def scalar(self, fmt: str, size: int, what: str) -> Any:
        return struct.unpack(fmt, self.take(size, what))[0]

    def u32(self, what: str) -> int:
        return int(self.scalar("<I", 4, what))

    def u64(self, what: str) -> int:
        return int(self.scalar("<Q", 8, what))

    def string(self, what: str) -> str:
        length = self.u64(f"{what} length")
        if length > MAX_STRING_BYTES or length > self.size - self.pos:
            raise InvalidModelFileError(
                f"invalid GGUF file: {what} claims {length} bytes, more than the file holds")
        return self.take(length, what).decode("utf-8", errors="replace")

    def skip_string(self, what: str) -> None:
        length = self.u64(f"{what} length")
        if length > MAX_STRING_BYTES or length > self.size - self.pos:
            raise InvalidModelFileError(
                f"invalid GGUF file: {what} claims {length} bytes, more than the file holds")
        self.skip(length, what)


def _read_value(reader: _Reader, value_type: int, key: str, depth: int = 0) -> Any:
    import gguf

    scalars = _scalars()
    if value_type in scalars:
        fmt, size = scalars[value_type]
        return reader.scalar(fmt, size, f"value of {key!r}")
    if value_type == gguf.GGUFValueType.STRING:
        return reader.string(f"value of {key!r}")
    if value_type == gguf.GGUFValueType.ARRAY:
        if depth > 2:
            raise InvalidModelFileError(f"invalid GGUF file: arrays nested too deep in {key!r}")
        item_type = reader.u32(f"array type of {key!r}")
        count = reader.u64(f"array length of {key!r}")
        min_item = scalars[item_type][1] if item_type in scalars else 8
        if count > MAX_ARRAY_ITEMS or count * min_item > reader.size - reader.pos:
            raise InvalidModelFileError(
                f"invalid GGUF file: array {key!r} claims {count} items, more than the file holds")
        if count <= KEEP_ARRAY_ITEMS:
            return [_read_value(reader, item_type, key, depth + 1) for _ in range(count)]
        if item_type in scalars:
            reader.skip(count * scalars[item_type][1], f"array {key!r}")
        elif item_type == gguf.GGUFValueType.STRING:
            for _ in range(count):
                reader.skip_string(f"item of {key!r}")
        else:
            for _ in range(count):
                _read_value(reader, item_type, key, depth + 1)
        return ArraySummary(item_type, count)
    raise InvalidModelFileError(f"invalid GGUF file: unknown value type {value_type} for {key!r}")


def _tensor_nbytes(shape: tuple[int, ...], ggml_type: int, name: str) -> int:
    import gguf

    try:
        block_size, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError) as exc:
        raise InvalidModelFileError(
            f"invalid GGUF file: tensor {name!r} has unknown type {ggml_type}") from exc
    elements = 1
    for dim in shape:
        elements *= dim
    if shape and shape[0] % block_size:
        raise InvalidModelFileError(
            f"invalid GGUF file: tensor {name!r} row size is not a multiple of its block size")
    return elements // block_size * type_size


def parse_gguf(data: mmap.mmap | bytes) -> GGUFInfo:
    """Parse and validate GGUF bytes; see the module docstring for what is checked."""
    import gguf

    reader = _Reader(data)
    if reader.size < 24 or reader.take(4, "magic") != MAGIC:
        raise InvalidModelFileError("invalid GGUF file: not a GGUF model (bad magic or too short)")
    version = reader.u32("version")
    if version not in SUPPORTED_VERSIONS:
        raise InvalidModelFileError(f"invalid GGUF file: unsupported version {version}")
    tensor_count = reader.u64("tensor count")
    kv_count = reader.u64("metadata count")
    # Every key/value needs at least 13 bytes and every tensor record at least 24: counts that
    # the file cannot hold are lies, refused before anything is allocated for them.
    if kv_count > MAX_KV_COUNT or kv_count * 13 > reader.size:
        raise InvalidModelFileError(f"invalid GGUF file: metadata count {kv_count} is too large")
    if tensor_count > MAX_TENSOR_COUNT or tensor_count * 24 > reader.size:
        raise InvalidModelFileError(f"invalid GGUF file: tensor count {tensor_count} is too large")

    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = reader.string("metadata key")
        value_type = reader.u32(f"type of {key!r}")
        metadata[key] = _read_value(reader, value_type, key)

    tensors: list[tuple[str, tuple[int, ...], int, int]] = []
    names: set[str] = set()
    for _ in range(tensor_count):
        name = reader.string("tensor name")
        if name in names:
            raise InvalidModelFileError(f"invalid GGUF file: tensor {name!r} appears twice")
        names.add(name)
        n_dims = reader.u32(f"dimensions of {name!r}")
        if n_dims == 0 or n_dims > MAX_DIMS:
            raise InvalidModelFileError(f"invalid GGUF file: tensor {name!r} has {n_dims} dims")
        shape = tuple(reader.u64(f"shape of {name!r}") for _ in range(n_dims))
        if any(dim == 0 or dim > 1 << 40 for dim in shape):
            raise InvalidModelFileError(f"invalid GGUF file: tensor {name!r} has a bad shape")
        ggml_type = reader.u32(f"type of {name!r}")
        offset = reader.u64(f"offset of {name!r}")
        tensors.append((name, shape, ggml_type, offset))

    alignment = metadata.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise InvalidModelFileError("invalid GGUF file: general.alignment is not a power of two")
    data_start = (reader.pos + alignment - 1) // alignment * alignment
    infos: list[TensorInfo] = []
    for name, shape, ggml_type, offset in tensors:
        nbytes = _tensor_nbytes(shape, ggml_type, name)
        if offset % alignment or data_start + offset + nbytes > reader.size:
            raise InvalidModelFileError(
                f"invalid GGUF file: tensor {name!r} lies outside the file (truncated or corrupt)")
        infos.append(TensorInfo(name, shape, ggml_type, offset, nbytes))
    check_consistency(metadata, infos)
    return GGUFInfo(version=version, metadata=metadata, tensors=infos, file_size=reader.size)


_CACHE: dict[tuple[str, int, int], GGUFInfo] = {}
_CACHE_SIZE = 64


def read_gguf(path: Path) -> GGUFInfo:
    """Validate and describe the GGUF at ``path`` (cached by path, size and mtime)."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise InvalidModelFileError("model file is missing or unreadable") from exc
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    if stat.st_size < 24:
        raise InvalidModelFileError("invalid GGUF file: not a GGUF model (bad magic or too short)")
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        info = parse_gguf(data)
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = info
    return info
