"""The engine as the API sees it: prepare a generation (checks, load, prompt, queue), stream it.

``Engine.start_generation`` does everything that can fail before a response starts, so errors reach
the client as an HTTP status; the returned ``Generation`` then streams ``Output`` deltas and ends
with one ``Done``. Closing a generation early (the client left) cancels its job and frees its slot.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from homeport import metrics
from homeport.engine.grammar import json_grammar
from homeport.engine.llama_types import ContextSettings, SamplingParams, default_threads
from homeport.engine.manager import ManagerSettings, ModelManager, Runner
from homeport.engine.memory import (
    available_memory,
    default_context_length,
    estimate_model_bytes,
    prompt_cache_bytes,
)
from homeport.engine.options import ModelOptions, resolve_options
from homeport.engine.parsing import Delta, OutputParser, ToolCall
from homeport.engine.scheduler import EmbeddingJob, Failed, Finished, Job, TextChunk
from homeport.engine.scheduler import Event as SchedulerEvent
from homeport.engine.stops import check_stops
from homeport.engine.template_process import RENDER_TIMEOUT_SECONDS, TemplateRenderer
from homeport.engine.templates import template_features
from homeport.errors import BadRequestError, HomeportError, InvalidOptionError, UnsupportedError
from homeport.store import ModelRecord

log = logging.getLogger(__name__)


@dataclass
class ChatMessage:
    role: str
    content: str = ""
    thinking: str | None = None
    images: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None

    def for_template(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if self.tool_name:
            message["name"] = self.tool_name
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        if self.thinking:
            message["reasoning_content"] = self.thinking
        return message


@dataclass
class GenerationInput:
    """One chat (``messages``) or completion (``prompt``) request, in engine terms."""

    record: ModelRecord
    options: Mapping[str, Any] | None = None
    keep_alive: float | None = None
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    system: str | None = None
    suffix: str | None = None
    raw: bool = False
    context: list[int] | None = None
    tools: list[dict[str, Any]] | None = None
    think: bool | str | None = None
    format: str | dict[str, Any] | None = None
    truncate: bool = True
    images: list[str] = field(default_factory=list)
    max_num_ctx: int | None = None  # the caller's limit on num_ctx


@dataclass(frozen=True)
class Timings:
    total: float = 0.0
    load: float = 0.0
    prompt_eval: float = 0.0
    eval: float = 0.0
    prompt_tokens: int = 0
    prompt_cached: int = 0
    eval_count: int = 0
    prompt_truncated_from: int = 0  # the prompt's length before it was cut to fit; 0: not cut

    @property
    def prompt_eval_count(self) -> int:
        """Prompt tokens actually evaluated (the cached prefix excluded), as Ollama reports it."""
        return self.prompt_tokens - self.prompt_cached


@dataclass(frozen=True)
class PromptTokens:
    """A prompt's tokens as the model takes them, and its length before truncation (if cut)."""

    tokens: list[int]
    truncated_from: int | None = None


@dataclass(frozen=True)
class Output:
    content: str = ""
    thinking: str = ""
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class Done:
    reason: str  # stop, length, load, unload
    timings: Timings
    context: tuple[int, ...] = ()


@dataclass(frozen=True)
class EngineSettings:
    manager: ManagerSettings
    default_num_ctx: int | None  # None: chosen per model from its trained context and the memory
    num_threads: int = 0
    flash_attention: str = "auto"
    # False: set by Ollama's OLLAMA_FLASH_ATTENTION rather than by homeport's name (chosen_flash_attention)
    flash_attention_by_name: bool = True
    kv_cache_type: str = "f16"
    speculation: str = "auto"  # on, off, or auto: on where exact (exact_by_default, or no FA)
    cache_ram: int = 0  # the RAM prompt cache's budget for each model (prompt_cache_bytes caps it)
    cache_ram_auto: bool = False  # not set by the user: no more than the memory left spares
    template_timeout: float = RENDER_TIMEOUT_SECONDS


@functools.cache
def exact_engine() -> bool:
    """Whether this engine gives a runner that asks for it the same logits at any step size at
    no cost to its decoding: built for the CPU alone (GPU kernels are not covered) with homeport's
    patch (``engine-patches/``). Measured on 2 cores with SmolLM2 and Gemma 3 270M against
    llama.cpp's fastest setup (flash attention's tiles, repacked weights): decode steps as fast
    (0.96x-1.02x), prompts 0.64x-0.76x as fast (flash attention's per-query path)."""
    from homeport.engine.llama import engine_can_be_step_invariant, engine_has_gpu_kernels

    return not engine_has_gpu_kernels() and engine_can_be_step_invariant()


def chosen_flash_attention(setting: str, by_name: bool) -> str:
    """The flash attention setting runners get. Ollama's ``OLLAMA_FLASH_ATTENTION=1`` (common
    advice, and needed there for a quantized K/V cache) asks for flash attention, which the default
    already has on an exact engine: there it keeps the default (exact kernels, speculation) rather
    than turning into the setup for speed alone that ``HOMEPORT_FLASH_ATTENTION=true`` names."""
    if setting == "on" and not by_name and exact_engine():
        return "auto"
    return setting


def exact_by_default(flash_attention: str) -> bool:
    """Whether runners ask for the same logits at any step though nothing else needs it: on an
    exact engine, unless flash attention was asked for by name (``HOMEPORT_FLASH_ATTENTION=true``:
    llama.cpp's fastest kernels, whose answers move with the batch). Then the default setup
    speculates, and turning speculation off changes no answer either."""
    return flash_attention == "auto" and exact_engine()


def capabilities(record: ModelRecord) -> list[str]:
    """Ollama's capability names for a model, judged from its file and template."""
    features = template_features(record.chat_template)
    found = ["completion"]
    if features.tools:
        found.append("tools")
    if features.thinking:
        found.append("thinking")
    return found


class Generation:
    """A started generation: iterate ``events()`` once; ``close()`` always (cancels if unfinished)."""

    def __init__(self, engine: Engine, runner: Runner, job: Job, parser: OutputParser,
                 queue: asyncio.Queue[SchedulerEvent], request: GenerationInput,
                 started: float, load_seconds: float, show_thinking: bool,
                 prompt: PromptTokens) -> None:
        self._engine = engine
        self._runner = runner
        self._job = job
        self._parser = parser
        self._queue = queue
        self._request = request
        self._started = started
        self._load_seconds = load_seconds
        self._show_thinking = show_thinking
        self._closed = False
        # The prompt's length before truncation, when it was cut to fit the context (else None),
        # and the tokens kept.
        self.prompt_truncated_from = prompt.truncated_from
        self.prompt_kept = len(prompt.tokens)

    def _output(self, deltas: list[Delta]) -> Output | None:
        content = "".join(delta.content for delta in deltas)
        thinking = "".join(delta.thinking for delta in deltas) if self._show_thinking else ""
        return Output(content=content, thinking=thinking) if content or thinking else None

    async def events(self) -> AsyncIterator[Output | Done]:
        try:
            while True:
                event = await self._queue.get()
                if isinstance(event, TextChunk):
                    output = self._output(self._parser.feed(event.text))
                    if output is not None:
                        yield output
                elif isinstance(event, Finished):
                    output = self._output(self._parser.finish())
                    if output is not None:
                        yield output
                    if self._parser.tool_calls:
                        yield Output(tool_calls=tuple(self._parser.tool_calls))
                    stats = event.stats
                    log.info(
                        "%s: %d prompt tokens (%d from cache) in %.2fs, %d generated in %.2fs "
                        "(%d drafted, %d accepted), %s",
                        self._runner.name, stats.prompt_tokens, stats.prompt_cached,
                        stats.prompt_seconds, stats.generated, stats.eval_seconds, stats.drafted,
                        stats.draft_accepted, event.reason)
                    yield Done(
                        reason=event.reason,
                        timings=Timings(
                            total=time.perf_counter() - self._started,
                            load=self._load_seconds,
                            prompt_eval=stats.prompt_seconds,
                            eval=stats.eval_seconds,
                            prompt_tokens=stats.prompt_tokens,
                            prompt_cached=stats.prompt_cached,
                            eval_count=stats.generated,
                            prompt_truncated_from=self.prompt_truncated_from or 0,
                        ),
                        context=stats.tokens,
                    )
                    return
                elif isinstance(event, Failed):
                    raise event.error
        finally:
            await self.close()

    @property
    def tokens_used(self) -> tuple[int, int]:
        """Prompt tokens (once the prompt was taken up) and tokens generated so far: what this
        generation has cost, also when it is closed before it finishes."""
        prompt = len(self._job.prompt) if self._job.admitted_at else 0
        return prompt, len(self._job.generated)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._job.cancel()
        self._runner.scheduler.wake()
        self._engine.manager.release(self._runner, self._request.keep_alive)


class Engine:
    """Loads models on demand and runs generations and embeddings on them."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.manager = ModelManager(settings.manager)
        self.templates = TemplateRenderer(timeout=settings.template_timeout)
        # Read once: a default context that moved with free memory would reload models at whim.
        self._context_memory = settings.manager.memory_limit or available_memory()

    async def start(self) -> None:
        await asyncio.to_thread(self.templates.start)
        await self.manager.start()

    async def close(self) -> None:
        try:
            await self.manager.close()
        finally:
            self.templates.close()

    def _context_settings(self, record: ModelRecord, options: ModelOptions) -> ContextSettings:
        flash_attention = chosen_flash_attention(self.settings.flash_attention,
                                                 self.settings.flash_attention_by_name)
        exact = exact_by_default(flash_attention)
        # Where a runner is exact at any step (README: speculative decoding), drafting cannot
        # change an answer: on an exact engine, and without flash attention on any engine.
        speculation = self.settings.speculation == "on" or (
            self.settings.speculation == "auto" and (exact or flash_attention == "off"))
        settings = ContextSettings(
            n_ctx_per_seq=options.num_ctx,
            n_seq=self.settings.manager.num_parallel,
            n_batch=options.num_batch,
            n_threads=options.num_thread or self.settings.num_threads,
            flash_attention=flash_attention,
            kv_cache_type=self.settings.kv_cache_type,
            num_gpu=options.num_gpu,
            speculation=speculation,
            # Loaded only where it drafts: elsewhere it would cost memory for nothing.
            draft_model=record.draft_path if speculation else None,
            exact=exact,
        )
        budget = prompt_cache_bytes(record.gguf, settings, self.settings.cache_ram)
        if self.settings.cache_ram_auto:
            # A default never makes a model too big: half of what it leaves of the memory at most.
            spare = self._context_memory - estimate_model_bytes(record.gguf, settings)
            budget = min(budget, max(0, spare // 2))
        return replace(settings, cache_ram=budget)

    def default_num_ctx(self, record: ModelRecord) -> int:
        """num_ctx for a request that sets none: the configured one, else as much of the model's
        trained context as Ollama's tier for this machine's memory allows and fits."""
        if self.settings.default_num_ctx is not None:
            return self.settings.default_num_ctx
        return default_context_length(record.gguf, self._context_memory,
                                      self.settings.manager.num_parallel,
                                      self.settings.kv_cache_type)

    def options_for(self, record: ModelRecord, request_options: Mapping[str, Any] | None,
                    max_num_ctx: int | None = None) -> ModelOptions:
        return resolve_options(record.parameters, request_options, self.default_num_ctx(record),
                               record.gguf.context_length, max_num_ctx,
                               max_threads=default_threads(),
                               model_layers=record.gguf.block_count + 1)

    # --- load / unload -------------------------------------------------------------------------

    async def load(self, record: ModelRecord, request_options: Mapping[str, Any] | None,
                   keep_alive: float | None, max_num_ctx: int | None = None) -> Done:
        """Load (or, with keep_alive 0, unload) a model without generating: done_reason load/unload."""
        started = time.perf_counter()
        if keep_alive is not None and keep_alive == 0:
            await self.manager.unload_now(record)
            return Done("unload", Timings(total=time.perf_counter() - started))
        options = self.options_for(record, request_options, max_num_ctx)
        runner, load_seconds = await self.manager.acquire(
            record, self._context_settings(record, options), keep_alive)
        self.manager.release(runner, keep_alive)
        return Done("load", Timings(total=time.perf_counter() - started, load=load_seconds))

    # --- generation ----------------------------------------------------------------------------

    async def start_generation(self, request: GenerationInput) -> Generation:
        """Check, load, render and queue ``request``; errors here reach the client as a status."""
        started = time.perf_counter()
        record = request.record
        features = template_features(record.chat_template)
        display = record.name.display
        if request.tools and not features.tools:
            raise UnsupportedError(f'"{display}" does not support tools')
        if request.think not in (None, False) and not features.thinking:
            raise UnsupportedError(f'"{display}" does not support thinking')
        if request.suffix:
            raise UnsupportedError(f'"{display}" does not support insert')
        if request.images or (request.messages and any(m.images for m in request.messages)):
            raise UnsupportedError(f'"{display}" does not support images')
        options = self.options_for(record, request.options, request.max_num_ctx)
        check_stops(options.stop)
        # Off the event loop: a large schema takes a while to convert.
        grammar = await asyncio.to_thread(_grammar_for, request.format) if request.format else None
        self.manager.check_queue()
        runner, load_seconds = await self.manager.acquire(
            record, self._context_settings(record, options), request.keep_alive)
        try:
            # Off the event loop: a long prompt takes a while to tokenize, and the template
            # renders in its own process, which may take up to its time limit.
            prompt, in_thinking = await asyncio.to_thread(
                self._prompt_tokens, runner, request, features.thinking, options)
            if prompt.truncated_from is not None:
                metrics.PROMPTS_TRUNCATED.labels(display).inc()
            if grammar is not None:
                # Here, for a 400 before the answer starts; the runner compiles it again.
                await asyncio.to_thread(_check_grammar, runner, grammar)
            queue: asyncio.Queue[SchedulerEvent] = asyncio.Queue()
            job = Job(
                prompt=prompt.tokens,
                sampling=_sampling(options, grammar),
                sink=queue.put_nowait,  # called on the event loop, by the manager's delivery
                num_predict=options.num_predict if options.num_predict >= 0 else -1,
                stop=options.stop,
                draft_limit=options.draft_num_predict,
            )
            parser = OutputParser(
                thinking=features.thinking and not request.raw,
                in_thinking=in_thinking,
                tool_names={tool["function"]["name"] for tool in request.tools}
                if request.tools else None,
            )
            self.manager.check_queue()
            runner.scheduler.submit(job)
        except BaseException:
            self.manager.release(runner, request.keep_alive)
            raise
        return Generation(self, runner, job, parser, queue, request, started, load_seconds,
                          show_thinking=request.think is not False, prompt=prompt)

    def _prompt_tokens(self, runner: Runner, request: GenerationInput, thinking_capable: bool,
                       options: ModelOptions) -> tuple[PromptTokens, bool]:
        """The prompt's tokens, and whether it leaves the model inside a <think> block."""
        text, in_thinking = self._prompt_text(runner, request, thinking_capable)
        return self._tokens(runner, request, text, options), in_thinking

    def _prompt_text(self, runner: Runner, request: GenerationInput,
                     thinking_capable: bool) -> tuple[str, bool]:
        """The rendered prompt, and whether it leaves the model inside a <think> block."""
        record = request.record
        if request.raw and request.prompt is not None:
            return request.prompt, False
        # The Modelfile's MESSAGE lines (a stored conversation) come before the request's own.
        messages = [ChatMessage(str(m.get("role", "user")), str(m.get("content", "")))
                    for m in record.messages if isinstance(m, dict)]
        if request.messages is not None:
            messages += request.messages
        else:
            messages.append(ChatMessage("user", request.prompt or ""))
        system = request.system if request.system is not None else record.system
        if system and not any(message.role == "system" for message in messages):
            messages.insert(0, ChatMessage("system", system))
        model = runner.model
        text = self.templates.render(
            record.chat_template,
            [message.for_template() for message in messages],
            tools=request.tools,
            bos_token=model.special_text(model.bos),
            eos_token=model.special_text(model.eos),
            enable_thinking=(request.think is not False) if thinking_capable else None,
        )
        in_thinking = thinking_capable and text.rstrip().endswith("<think>")
        return text, in_thinking

    @staticmethod
    def _encode(runner: Runner, request: GenerationInput, text: str) -> list[int]:
        """The prompt's tokens as the model will see them, before any truncation."""
        model = runner.model
        tokens = model.tokenize(text, add_special=True, parse_special=not request.raw)
        if len(tokens) >= 2 and tokens[0] == tokens[1] == model.bos:
            tokens = tokens[1:]  # the template wrote BOS itself
        if request.context:
            context = [int(t) for t in request.context]
            # llama.cpp fails a whole batch, every request in it, on an id outside the vocabulary.
            bad = next((t for t in context if not 0 <= t < model.n_vocab), None)
            if bad is not None:
                raise InvalidOptionError(f"invalid token id in context: {bad} (the model's "
                                         f"vocabulary has ids 0 to {model.n_vocab - 1})")
            tokens = context + tokens
        return tokens or [model.bos]

    def _tokens(self, runner: Runner, request: GenerationInput, text: str,
                options: ModelOptions) -> PromptTokens:
        tokens = self._encode(runner, request, text)
        limit = options.num_ctx - 1
        if len(tokens) <= limit:
            return PromptTokens(tokens)
        if not request.truncate:
            raise InvalidOptionError(
                f"input length ({len(tokens)} tokens) exceeds the context length "
                f"({options.num_ctx})")
        # Keep the first num_keep tokens (the start of the system prompt) and the most recent
        # ones, leaving a quarter of the context for the answer.
        keep = max(0, min(options.num_keep, limit // 4))
        room = limit - keep - max(limit // 4, 1)
        kept = tokens[:keep] + tokens[len(tokens) - room:]
        log.warning("%s: prompt of %d tokens truncated to %d to fit num_ctx %d",
                    request.record.name.display, len(tokens), len(kept), options.num_ctx)
        return PromptTokens(kept, truncated_from=len(tokens))

    async def count_prompt_tokens(self, request: GenerationInput) -> int:
        """How many tokens ``request``'s prompt is, through the model's own template and
        tokenizer (loading the model if it is not loaded)."""
        thinking = template_features(request.record.chat_template).thinking
        options = self.options_for(request.record, request.options, request.max_num_ctx)
        settings = self._context_settings(request.record, options)
        runner, _ = await self.manager.acquire(request.record, settings, request.keep_alive)
        try:
            def count() -> int:
                text, _ = self._prompt_text(runner, request, thinking)
                return len(self._encode(runner, request, text))

            return await asyncio.to_thread(count)
        finally:
            self.manager.release(runner, request.keep_alive)

    # --- embeddings ----------------------------------------------------------------------------

    async def embed(self, record: ModelRecord, inputs: list[str], *, truncate: bool,
                    options: Mapping[str, Any] | None, keep_alive: float | None,
                    max_num_ctx: int | None = None) -> tuple[list[list[float]], int, float]:
        """Raw (un-normalised) embeddings, the prompt token count, and seconds spent loading."""
        model_options = self.options_for(record, options, max_num_ctx)
        self.manager.check_queue()
        runner, load_seconds = await self.manager.acquire(
            record, self._context_settings(record, model_options), keep_alive)
        try:
            vectors = []
            total_tokens = 0
            for text in inputs:
                tokens = runner.model.tokenize(text, add_special=True, parse_special=False)
                limit = model_options.num_ctx
                if len(tokens) > limit:
                    if not truncate:
                        raise InvalidOptionError("input length exceeds the context length")
                    tokens = tokens[:limit]
                total_tokens += len(tokens)
                vectors.append(await self._embed_one(runner, tokens))
            return vectors, total_tokens, load_seconds
        finally:
            self.manager.release(runner, keep_alive)

    async def _embed_one(self, runner: Runner, tokens: list[int]) -> list[float]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[float] | HomeportError] = loop.create_future()

        def done(result: list[float] | HomeportError) -> None:
            loop.call_soon_threadsafe(future.set_result, result)

        runner.scheduler.submit_embedding(EmbeddingJob(tokens, done))
        result = await future
        if isinstance(result, HomeportError):
            raise result
        return result


def _grammar_for(format_: str | dict[str, Any] | None) -> str | None:
    if format_ is None or format_ == "":
        return None
    if format_ == "json":
        return json_grammar(None)
    if isinstance(format_, dict):
        return json_grammar(format_)
    raise BadRequestError(f'invalid format: expected "json" or a JSON schema, got {format_!r}')


def _check_grammar(runner: Runner, grammar: str) -> None:
    """InvalidOptionError (a 400) when llama.cpp will not compile ``grammar`` for this model's
    vocabulary (the server's copy of it: a grammar sampler needs no weights)."""
    from homeport.engine.llama import Sampler  # loaded already: the runner's model is

    Sampler(runner.model, SamplingParams(grammar=grammar)).free()


def _sampling(options: ModelOptions, grammar: str | None) -> SamplingParams:
    return SamplingParams(
        temperature=options.temperature,
        top_k=options.top_k,
        top_p=options.top_p,
        min_p=options.min_p,
        typical_p=options.typical_p,
        repeat_penalty=options.repeat_penalty,
        repeat_last_n=options.repeat_last_n,
        presence_penalty=options.presence_penalty,
        frequency_penalty=options.frequency_penalty,
        seed=options.seed,
        grammar=grammar,
    )


def l2_normalize(vector: list[float], dimensions: int | None = None) -> list[float]:
    if dimensions:
        vector = vector[:dimensions]
    norm = math.sqrt(sum(value * value for value in vector))
    return [value / norm for value in vector] if norm > 0 else vector
