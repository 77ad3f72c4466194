"""The narrow interface to llama.cpp: load a model, tokenize, decode a batch, sample, embed.

Everything here calls llama-cpp-python's low-level ctypes bindings, which release the GIL while
llama.cpp computes, so the event loop stays responsive while a scheduler thread decodes. Nothing
outside ``engine/`` imports llama_cpp, and only what runs a model imports this module: a server
that has loaded no model has not loaded llama.cpp (the settings types live in ``llama_types``).
A ``LlamaModel`` is used from one thread at a time: its scheduler's.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import threading
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp._ggml import libggml

from homeport.engine import rpc
from homeport.engine.llama_types import KV_CACHE_SIZE_FACTOR as KV_CACHE_SIZE_FACTOR
from homeport.engine.llama_types import ContextSettings as ContextSettings
from homeport.engine.llama_types import EngineError as EngineError
from homeport.engine.llama_types import Offload as Offload
from homeport.engine.llama_types import SamplingParams as SamplingParams
from homeport.engine.llama_types import default_threads as default_threads
from homeport.errors import InvalidOptionError

log = logging.getLogger(__name__)

_backend_lock = threading.Lock()
_backend_ready = False


def _init_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if _backend_ready:
            return
        # llama-cpp-python's own log callback prints everything unless its logger is quieter.
        level = logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.ERROR
        logging.getLogger("llama-cpp-python").setLevel(level)
        llama_cpp.llama_backend_init()
        _backend_ready = True


_ENGINE_LIBRARIES = Path(llama_cpp.__file__).parent / "lib"
# ggml's GPU backends, as llama-cpp-python ships them beside the CPU's.
_GPU_BACKENDS = ("cuda", "hip", "metal", "vulkan", "sycl", "opencl", "musa", "cann")


def engine_has_gpu_kernels() -> bool:
    """Whether the engine was built with a GPU backend (homeport's patch does not reach those)."""
    return any(next(_ENGINE_LIBRARIES.glob(f"libggml-{name}.*"), None) is not None
               for name in _GPU_BACKENDS)


@functools.cache
def _step_invariance_switch() -> Any:
    """The patched engine's ``homeport_step_invariant`` (``engine-patches/``), or None; looked up
    once per process (the engine's library does not change under it)."""
    for name in ("libggml-cpu.so", "libggml-cpu.dylib"):
        if (_ENGINE_LIBRARIES / name).exists():
            library = ctypes.CDLL(str(_ENGINE_LIBRARIES / name))
            switch = getattr(library, "homeport_step_invariant", None)
            if switch is not None:
                switch.restype = ctypes.c_bool
            return switch
    return None


def engine_can_be_step_invariant() -> bool:
    """Whether the engine carries homeport's patch, so that a runner that asks for it
    (``kernel_environment``) computes each token's sums alike at any step size."""
    return _step_invariance_switch() is not None


def step_invariant_kernels() -> bool:
    """Whether ggml's CPU kernels compute each token's sums the same way whatever the number of
    tokens in its step (matrix products and flash attention alike): an engine built with
    homeport's patch in a process that asked for it (``kernel_environment``)."""
    switch = _step_invariance_switch()
    return switch is not None and bool(switch())


class Batch:
    """A reusable ``llama_batch``: one token per entry, one sequence id each."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._batch = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.n_tokens = 0

    def clear(self) -> None:
        self.n_tokens = 0

    def add(self, token: int, pos: int, seq_id: int, want_logits: bool) -> int:
        """Append one token; return its index (used to sample from its logits)."""
        index = self.n_tokens
        if index >= self.capacity:
            raise EngineError("batch overflow")
        batch = self._batch
        batch.token[index] = token
        batch.pos[index] = pos
        batch.n_seq_id[index] = 1
        batch.seq_id[index][0] = seq_id
        batch.logits[index] = 1 if want_logits else 0
        self.n_tokens += 1
        return index

    @property
    def raw(self) -> Any:
        self._batch.n_tokens = self.n_tokens
        return self._batch

    def free(self) -> None:
        llama_cpp.llama_batch_free(self._batch)


_FLASH_ATTENTION = {"auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
                    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED}
_KV_CACHE_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0,
                   "q4_0": llama_cpp.GGML_TYPE_Q4_0}

# The grammar is applied to the best 64 candidates, then the best 512, 4096, then the rest: most
# rejected free samples are settled by the first chunk or two, and few calls keep the worst case
# (too few accepted tokens to decide early) near the full pass's cost.
_FIRST_CHUNK = 64
_CHUNK_GROWTH = 8

_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")], align=True)


class Sampler:
    """One request's sampler chain (penalties, top-k/p, min-p, temperature, seed) and grammar.

    Without a grammar, llama.cpp samples and accepts in one call. With one, applying the grammar to
    the whole vocabulary every step is slow (about 15x here), so, as llama.cpp's own common sampler
    does, we sample freely first, ask the grammar whether it accepts that token, and only when it
    does not, sample again under the grammar. That second pass runs on the model's scheduler
    thread, so its cost stalls every other stream of the model: rather than applying the grammar
    to all 49,152 tokens (hundreds of ms for a large enum), we apply it to the best candidates
    first, a chunk at a time, and stop as soon as the accepted ones decide what the full pass would
    (see ``_sample_rejected``). ``narrow=False`` keeps the full pass, for comparison.
    """

    def __init__(self, model: LlamaModel, params: SamplingParams, *, narrow: bool = True) -> None:
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self._chain = llama_cpp.llama_sampler_chain_init(chain_params)
        self._grammar: Any = None
        if params.grammar:
            self._grammar = llama_cpp.llama_sampler_init_grammar(
                model.vocab, params.grammar.encode(), b"root")
            if not self._grammar:
                self.free()
                raise InvalidOptionError("format: the requested grammar is not valid")
            self._candidates = np.empty(model.n_vocab, dtype=_TOKEN_DATA)
            self._ids = np.arange(model.n_vocab, dtype=np.int32)
            self._single = np.empty(1, dtype=_TOKEN_DATA)
        # How many of the best accepted tokens decide the chain's answer: greedy needs the best,
        # top-k its k. Penalties change logits inside the chain (and may reorder them), and without
        # top-k every accepted token counts: those cases keep the full pass.
        penalised = bool(params.repeat_penalty != 1.0 or params.presence_penalty
                         or params.frequency_penalty)
        self._greedy = params.temperature <= 0
        # Greedy without penalties is the first highest logit, as llama.cpp's greedy sampler picks
        # it; numpy finds it without building the 262,144 candidates of a large vocabulary
        # (0.03 against 0.28 ms a token on Gemma 3, a few percent of a step at four streams).
        self._argmax = self._greedy and not penalised
        self._deciding: int | None = None
        if narrow and not penalised:
            self._deciding = 1 if self._greedy else (params.top_k if params.top_k > 0 else None)
        self.narrowed = 0  # rejected free samples the chunked search settled: for tests, benchmarks
        add = self._add
        if penalised:
            add(llama_cpp.llama_sampler_init_penalties(
                model.n_vocab, params.repeat_last_n, params.repeat_penalty,
                params.frequency_penalty, params.presence_penalty))
        if params.temperature <= 0:
            add(llama_cpp.llama_sampler_init_greedy())
            return
        if params.top_k > 0:
            add(llama_cpp.llama_sampler_init_top_k(params.top_k))
        if 0 < params.typical_p < 1:
            add(llama_cpp.llama_sampler_init_typical(params.typical_p, 1))
        if 0 < params.top_p < 1:
            add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0:
            add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(params.temperature))
        seed = params.seed if params.seed >= 0 else llama_cpp.LLAMA_DEFAULT_SEED
        add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def _add(self, sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def sample(self, model: LlamaModel, batch_index: int) -> int:
        """Sample from the logits of ``batch_index`` and accept the token (grammar, penalties)."""
        if self._grammar is None:
            if self._argmax:
                return int(np.argmax(model.logits(batch_index)))
            return int(llama_cpp.llama_sampler_sample(self._chain, model.ctx, batch_index))
        logits = model.logits(batch_index)
        token = self._apply(logits, with_grammar=False)
        if not self._grammar_accepts(token, float(logits[token])):
            token = self._sample_rejected(logits)
        llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self._chain, token)
        return token

    @staticmethod
    def _token_array(data: np.ndarray[Any, Any]) -> Any:
        return llama_cpp.llama_token_data_array(
            data=data.ctypes.data_as(llama_cpp.llama_token_data_p), size=len(data),
            selected=-1, sorted=False)

    def _apply(self, logits: np.ndarray[Any, Any], *, with_grammar: bool) -> int:
        candidates = self._candidates
        candidates["id"] = self._ids  # reset every time: the chain sorts the array in place
        candidates["logit"] = logits
        candidates["p"] = 0.0
        array = self._token_array(candidates)
        if with_grammar:
            llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(array))
        return int(candidates["id"][array.selected])

    def _sample_rejected(self, logits: np.ndarray[Any, Any]) -> int:
        """What the chain picks with the grammar applied to every token, found by applying the
        grammar to the candidates in descending logit order, a chunk at a time.

        Chunks are closed under ties (all tokens with a logit at or above a threshold), and each is
        ordered by logit, then id, so the first accepted token is the one llama.cpp's greedy sampler
        picks from the full array (the first maximum in id order), and the first k accepted are the
        k that the full pass's top-k keeps, which the rest of the chain (typical, top-p, min-p,
        temperature, dist: the same single random draw) then sees unchanged. Exact ties among those
        k would be ordered by llama.cpp's unstable sort, so they are not taken as decided. When the
        chunks have covered the whole vocabulary undecided, the grammar's verdicts are already all
        known: the full array is rebuilt from them, at no more cost than the full pass.
        """
        deciding = self._deciding
        if deciding is None:
            return self._apply(logits, with_grammar=True)
        n_vocab = len(logits)
        seen = np.zeros(n_vocab, dtype=bool)
        checked: list[np.ndarray[Any, Any]] = []
        accepted: list[np.ndarray[Any, Any]] = []
        n_accepted = 0
        width = _FIRST_CHUNK
        while width < n_vocab:
            threshold = np.partition(logits, n_vocab - width)[n_vocab - width]
            chunk_ids = np.flatnonzero((logits >= threshold) & ~seen)
            width *= _CHUNK_GROWTH
            if len(chunk_ids) == 0:
                continue
            seen[chunk_ids] = True
            # Best first, ties lowest id first: a stable sort of ids already in ascending order.
            chunk_ids = chunk_ids[np.argsort(-logits[chunk_ids], kind="stable")]
            chunk = self._grammar_verdicts(logits, chunk_ids)
            checked.append(chunk)
            kept = chunk[chunk["logit"] > -np.inf]
            accepted.append(kept)
            n_accepted += len(kept)
            if n_accepted < deciding:
                continue
            best = np.concatenate(accepted)
            if self._greedy:
                self.narrowed += 1
                return int(best["id"][0])
            top = best["logit"][:deciding + 1]
            if not np.any(top[1:] == top[:-1]):
                self.narrowed += 1
                return self._apply_chain(np.ascontiguousarray(best[:deciding]))
        rest = np.flatnonzero(~seen)
        if len(rest):
            checked.append(self._grammar_verdicts(logits, rest))
        everything = np.concatenate(checked)
        candidates = self._candidates
        candidates["id"] = self._ids
        candidates["logit"] = logits
        candidates["logit"][everything["id"]] = everything["logit"]
        candidates["p"] = 0.0
        return self._apply_chain(candidates)

    def _grammar_verdicts(self, logits: np.ndarray[Any, Any],
                          ids: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """``ids`` as candidates, in that order, after the grammar has set the logit of each token
        it rejects to -inf."""
        chunk = np.empty(len(ids), dtype=_TOKEN_DATA)
        chunk["id"] = ids
        chunk["logit"] = logits[ids]
        chunk["p"] = 0.0
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(self._token_array(chunk)))
        return chunk

    def _apply_chain(self, candidates: np.ndarray[Any, Any]) -> int:
        array = self._token_array(candidates)
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(array))
        return int(candidates["id"][array.selected])

    def _grammar_accepts(self, token: int, logit: float) -> bool:
        single = self._single
        single["id"], single["logit"], single["p"] = token, logit, 0.0
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(self._token_array(single)))
        return bool(np.isfinite(single["logit"][0]))

    def free(self) -> None:
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None


_SPLIT_MODES = {"none": llama_cpp.LLAMA_SPLIT_MODE_NONE, "layer": llama_cpp.LLAMA_SPLIT_MODE_LAYER}


class _BufferTypeOverride(ctypes.Structure):
    """struct llama_model_tensor_buft_override (llama_cpp binds the field as a bare pointer)."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


_cpu_buffer_type = libggml.ggml_backend_cpu_buffer_type
_cpu_buffer_type.restype = ctypes.c_void_p
_cpu_buffer_type.argtypes = []


def _set_offload(params: Any, offload: Offload) -> list[Any]:
    """Fill ``params`` from ``offload``; returns the ctypes arrays it points to, which must live
    as long as the load."""
    params.n_gpu_layers = offload.n_gpu_layers
    if offload.n_gpu_layers <= 0:
        return []  # llama.cpp's defaults otherwise: split_mode none would need a main_gpu
    params.split_mode = _SPLIT_MODES[offload.split_mode]
    params.main_gpu = offload.main_gpu
    kept: list[Any] = []
    if offload.rpc_servers:
        # NULL-terminated, in the order main_gpu and tensor_split index.
        handles = rpc.offload_devices(offload.rpc_servers)
        devices = (ctypes.c_void_p * (len(handles) + 1))(*handles, None)
        params.devices = ctypes.cast(devices, ctypes.c_void_p)
        kept.append(devices)
    if offload.tensor_split:
        split = (ctypes.c_float * llama_cpp.LLAMA_MAX_DEVICES)(
            *offload.tensor_split[:llama_cpp.LLAMA_MAX_DEVICES])
        params.tensor_split = split
        kept.append(split)
    patterns = offload.expert_patterns()
    if patterns:
        overrides = (_BufferTypeOverride * (len(patterns) + 1))(
            *(_BufferTypeOverride(pattern.encode(), _cpu_buffer_type()) for pattern in patterns))
        params.tensor_buft_overrides = ctypes.addressof(overrides)
        kept.append(overrides)
    return kept


class LlamaModel:
    """A loaded model and its generation context (``n_seq`` sequences of ``n_ctx_per_seq``)."""

    def __init__(self, path: Path, settings: ContextSettings,
                 offload: Offload | None = None) -> None:
        _init_backend()
        self.path = path
        self.settings = settings
        if offload is not None and offload.rpc_servers:
            rpc.add_servers(list(offload.rpc_servers))  # aborts when a worker does not answer
        model_params = llama_cpp.llama_model_default_params()
        model_params.use_mmap = True
        # Repacked CPU weights are multiplied by other kernels from 4 tokens a step on: a token's
        # logits would then depend on how many its step holds (kernel_environment).
        model_params.use_extra_bufts = not settings.same_logits_at_any_step
        self._offload_arrays = _set_offload(model_params, offload or Offload())
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
        if not self.model:
            raise EngineError("llama.cpp could not load the model file")
        self._read_vocabulary()
        threads = settings.n_threads or default_threads()
        self.ctx = self._new_context(
            n_ctx=settings.n_ctx_total, n_batch=settings.n_batch, n_seq=settings.n_seq,
            threads=threads, embeddings=False, flash_attention=settings.flash_attention,
            kv_cache_type=settings.kv_cache_type)
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self._threads = threads
        self._embed_ctx: Any = None
        self._embed_n_ctx = 0
        # Where this holds, steps that must be exact need no pads (engine.step_shape).
        self.steps_sum_alike = settings.same_logits_at_any_step and step_invariant_kernels()

    def _read_vocabulary(self) -> None:
        """What the text methods need from the loaded ``self.model``."""
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(self.model))
        self.n_embd = int(llama_cpp.llama_model_n_embd(self.model))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.bos = int(llama_cpp.llama_vocab_bos(self.vocab))
        self.eos = int(llama_cpp.llama_vocab_eos(self.vocab))

    def _new_context(self, *, n_ctx: int, n_batch: int, n_seq: int, threads: int,
                     embeddings: bool, flash_attention: str = "auto",
                     kv_cache_type: str = "f16") -> Any:
        params = llama_cpp.llama_context_default_params()
        params.flash_attn_type = _FLASH_ATTENTION[flash_attention]
        params.type_k = params.type_v = _KV_CACHE_TYPES[kv_cache_type]
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.n_threads = threads
        params.n_threads_batch = threads
        params.no_perf = True
        params.kv_unified = False
        if embeddings:
            params.embeddings = True
            params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
            params.kv_unified = True
        ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not ctx:
            raise EngineError("llama.cpp could not create a context for the model")
        return ctx

    # --- text ----------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True,
                 parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buffer = (llama_cpp.llama_token * capacity)()
        count = llama_cpp.llama_tokenize(self.vocab, data, len(data), buffer, capacity,
                                         add_special, parse_special)
        if count < 0:
            capacity = -count
            buffer = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(self.vocab, data, len(data), buffer, capacity,
                                             add_special, parse_special)
        if count < 0:
            raise EngineError("tokenization failed")
        return list(buffer[:count])

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token; special tokens (control markers) are empty unless asked for."""
        buffer = ctypes.create_string_buffer(64)
        size = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, 64, 0, special)
        if size < 0:
            buffer = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, -size, 0, special)
        return buffer.raw[:size]

    def special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.token_bytes(token, special=True).decode("utf-8", "replace")

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.token_bytes(token) for token in tokens).decode("utf-8", "replace")

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    # --- decoding ------------------------------------------------------------------------------

    def decode(self, batch: Batch) -> None:
        result = llama_cpp.llama_decode(self.ctx, batch.raw)
        if result != 0:
            raise EngineError(f"llama_decode failed ({result})")

    def logits(self, batch_index: int) -> np.ndarray[Any, Any]:
        """The last decode's logits at ``batch_index`` (a view, valid until the next decode)."""
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, batch_index),
                                     shape=(self.n_vocab,))

    def forget(self, seq_id: int, from_pos: int = 0) -> bool:
        """Drop a sequence's KV cache from ``from_pos`` on; False if that cannot be done partially."""
        ok = bool(llama_cpp.llama_memory_seq_rm(self.memory, seq_id, from_pos, -1))
        if not ok and from_pos > 0:
            llama_cpp.llama_memory_seq_rm(self.memory, seq_id, 0, -1)
        return ok

    @property
    def can_roll_back(self) -> bool:
        """Whether a sequence's last positions can be dropped (not for recurrent state)."""
        return not (llama_cpp.llama_model_is_recurrent(self.model)
                    or llama_cpp.llama_model_is_hybrid(self.model))

    @property
    def saved_state_can_be_cut(self) -> bool:
        """Whether a restored sequence state may be cut back to any earlier position. With a
        sliding window (Gemma 3), llama.cpp saves only the window's cells before the last
        position, so a restored state can go on from its last token (re-evaluated or not) but
        cut back further its window would miss cells: measured, a Gemma copy restored and cut
        from 1,370 to 770 tokens answered with a run of "[" lines instead of the code."""
        return int(llama_cpp.llama_model_n_swa(self.model)) == 0

    def save_sequence(self, seq_id: int) -> bytes:
        """A sequence's state (its cells' positions and K/V), for ``restore_sequence``."""
        size = int(llama_cpp.llama_state_seq_get_size(self.ctx, seq_id))
        buffer = (ctypes.c_uint8 * size)()
        written = int(llama_cpp.llama_state_seq_get_data(self.ctx, buffer, size, seq_id))
        return bytes(memoryview(buffer)[:written])

    def restore_sequence(self, seq_id: int, data: bytes) -> bool:
        """Make ``seq_id`` hold a state ``save_sequence`` returned; False if it did not fit."""
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        return int(llama_cpp.llama_state_seq_set_data(self.ctx, buffer, len(data), seq_id)) > 0

    def copy_sequence(self, source: int, target: int) -> None:
        """Make ``target``'s cache a copy of ``source``'s (its old cells are dropped). Each
        sequence has a KV stream of its own, which llama.cpp copies whole, at the next decode."""
        llama_cpp.llama_memory_seq_cp(self.memory, source, target, -1, -1)

    # --- embeddings ----------------------------------------------------------------------------

    def embed(self, tokens: list[int]) -> list[float]:
        """Mean-pooled hidden states of ``tokens`` (not normalised), from a lazily made context."""
        needed = max(512, 1 << math.ceil(math.log2(max(len(tokens), 1))))
        if self._embed_ctx is None or self._embed_n_ctx < needed:
            self._free_embed_ctx()
            self._embed_n_ctx = min(needed, max(self.n_ctx_train, 512))
            self._embed_ctx = self._new_context(
                n_ctx=self._embed_n_ctx, n_batch=self._embed_n_ctx, n_seq=1,
                threads=self._threads, embeddings=True)
        if len(tokens) > self._embed_n_ctx:
            raise InvalidOptionError("input length exceeds the context length")
        batch = Batch(len(tokens))
        try:
            for pos, token in enumerate(tokens):
                batch.add(token, pos, 0, True)
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._embed_ctx), True)
            result = llama_cpp.llama_decode(self._embed_ctx, batch.raw)
            if result != 0:
                raise EngineError(f"llama_decode failed while embedding ({result})")
            pointer = llama_cpp.llama_get_embeddings_seq(self._embed_ctx, 0)
            if not pointer:
                raise EngineError("llama.cpp returned no embedding")
            return [float(pointer[i]) for i in range(self.n_embd)]
        finally:
            batch.free()

    def _free_embed_ctx(self) -> None:
        if self._embed_ctx is not None:
            llama_cpp.llama_free(self._embed_ctx)
            self._embed_ctx = None

    def close(self) -> None:
        self._free_embed_ctx()
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None
