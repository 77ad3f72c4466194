"""The figures without a server: the raw engine in-process, ``llama-bench`` and ``llama-batched-bench``.

The raw engine is llama-cpp-python's ``Llama`` generating token by token in this process, fed the
same chat-formatted prompts as the servers; it shows what a server could at best deliver to one
client through these bindings. ``llama-bench``'s tg figure is llama.cpp's own single-sequence
decode speed, and ``llama-batched-bench`` gives the ceiling for batched decoding at 1, 2, 4 and 8
sequences on this machine.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from bench.llamacpp_build import LlamaTools
from bench.peers import Settings
from bench.prompts import Message
from bench.streams import SEED, StreamResult, record_text

TOOL_TIMEOUT = 600.0
BATCHED_PROMPT_TOKENS = 64


class RawEngine:
    """llama-cpp-python's ``Llama`` loaded with the peers' settings (one sequence)."""

    def __init__(self, settings: Settings) -> None:
        self.llm = llama_cpp.Llama(
            str(settings.model_path), n_ctx=settings.ctx_per_slot, n_batch=settings.batch,
            n_ubatch=settings.batch, n_threads=settings.threads,
            n_threads_batch=settings.threads, seed=SEED, verbose=False)
        template = self.llm.metadata.get("tokenizer.chat_template", "")
        special = self.llm.detokenize
        self._formatter = Jinja2ChatFormatter(
            template, special([self.llm.token_eos()], special=True).decode(errors="replace"),
            special([self.llm.token_bos()], special=True).decode(errors="replace"))

    def __enter__(self) -> RawEngine:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.llm.close()

    def stream(self, messages: list[Message], max_tokens: int) -> StreamResult:
        """Generate exactly ``max_tokens`` greedy tokens (end-of-text ignored), timing each one."""
        prompt = self._formatter(messages=cast(Any, messages)).prompt
        tokens = self.llm.tokenize(prompt.encode(), add_bos=False, special=True)
        self.llm.reset()  # type: ignore[no-untyped-call]  # no prompt reuse between runs, as with the servers' distinct prompts
        result = StreamResult(started=time.perf_counter(), prompt_tokens=len(tokens))
        for token in self.llm.generate(tokens, temp=0.0, top_k=1):
            record_text(result, self.llm.detokenize([token]).decode(errors="replace"))
            if result.pieces >= max_tokens:
                break
        result.finish_reason = "length"
        result.ended = time.perf_counter()
        return result


def eog_tokens(model_path: Path) -> list[int]:
    """Every end-of-generation token of the model (only its vocabulary is loaded)."""
    # llama-cpp-python's log callback prints llama.cpp's whole loading log unless told otherwise.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), params)
    if not model:
        raise RuntimeError(f"llama.cpp could not read the vocabulary of {model_path.name}")
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        return [token for token in range(llama_cpp.llama_vocab_n_tokens(vocab))
                if llama_cpp.llama_vocab_is_eog(vocab, token)]
    finally:
        llama_cpp.llama_model_free(model)


def system_info() -> str:
    """llama.cpp's CPU feature line for the library llama-cpp-python loaded."""
    return bytes(llama_cpp.llama_print_system_info()).decode(errors="replace").strip()


@dataclass(frozen=True)
class LlamaBenchFigure:
    tokens_per_second: float
    stddev: float
    build_commit: str
    cpu_info: str


@dataclass(frozen=True)
class BatchedFigure:
    sequences: int
    decode_tokens_per_second: float
    prompt_tokens_per_second: float


def _run_tool(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=TOOL_TIMEOUT,
                            check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-10:])
        raise RuntimeError(f"{command[0]} exited with {result.returncode}:\n{tail}")
    return result.stdout + "\n" + result.stderr


def llama_bench(tools: LlamaTools, settings: Settings, repetitions: int = 3) -> LlamaBenchFigure:
    """``llama-bench``'s tg figure: decoding ``max_tokens`` tokens of one sequence."""
    output = _run_tool([
        str(tools.path("llama-bench")), "-m", str(settings.model_path), "-p", "0",
        "-n", str(settings.max_tokens), "-t", str(settings.threads), "-b", str(settings.batch),
        "-ub", str(settings.batch), "-r", str(repetitions), "-o", "jsonl"])
    for line in output.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("n_gen") == settings.max_tokens:
                return LlamaBenchFigure(float(record["avg_ts"]), float(record["stddev_ts"]),
                                        str(record.get("build_commit", "")),
                                        str(record.get("cpu_info", "")))
    raise RuntimeError("llama-bench printed no tg result")


def llama_batched_bench(tools: LlamaTools, settings: Settings,
                        sequences: list[int]) -> list[BatchedFigure]:
    """``llama-batched-bench``: decode speed with 1..N sequences in one batch (the ceiling)."""
    output = _run_tool([
        str(tools.path("llama-batched-bench")), "-m", str(settings.model_path),
        "-c", str(settings.ctx_per_slot * settings.parallel),
        "-b", str(settings.batch), "-ub", str(settings.batch),
        "-npp", str(BATCHED_PROMPT_TOKENS), "-ntg", str(settings.max_tokens),
        "-npl", ",".join(str(n) for n in sequences),
        "-t", str(settings.threads), "-tb", str(settings.threads), "--output-format", "jsonl"])
    figures = []
    for line in output.splitlines():
        if line.startswith('{"n_kv_max"'):
            record = json.loads(line)
            figures.append(BatchedFigure(int(record["pl"]), float(record["speed_tg"]),
                                         float(record["speed_pp"])))
    if not figures:
        raise RuntimeError("llama-batched-bench printed no results")
    return figures
