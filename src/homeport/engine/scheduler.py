"""Continuous batching for one loaded model, on its own thread.

Each step builds one ``llama_batch``: one decode token for every running request, then prefill
chunks of newly admitted prompts in the room left, and makes one ``llama_decode`` call (where a
token's logits must not depend on the step, as many as ``engine.step_shape`` asks, each sampled
before the next). Every request owns a slot (a llama.cpp sequence id). A slot keeps its KV cache
when its request ends, and a new request goes to the free slot sharing the longest token prefix with
its prompt, so a chat whose history grows turn by turn evaluates only the new tokens. When another
slot's cache, busy or idle, shares a longer prefix (the same long system prompt from another
editor), the new request's slot starts from a copy of that slot's cells instead of evaluating them
again; when that prefix is still being evaluated for another request (editors that send together),
the new request waits for it rather than evaluating it a second time beside it. And when a slot is
taken by another conversation, its state is kept in host memory (``engine.prompt_cache``, within a
budget) and restored when a prompt with that prefix returns.

With speculation on, a running request's next token may bring a draft: the tokens that followed
the same few tokens earlier in its prompt or output (``engine.drafting``), or, when there are none
and the model names a draft model, that model's greedy guess (``engine.draft_model``): the first
costs nothing to make, the second a decode of the draft model per token. The draft is decoded in
the same step, with logits at every position, and the request's own sampler samples them in order
for as long as it picks exactly the drafted token; the first token it picks otherwise ends the
draft, and the cells of the tokens it refused are dropped. Each emitted token is still sampled once,
by the same sampler from the same logits, so greedy answers are unchanged and sampled ones keep their
distribution (a draft is a single guess: accepting it exactly when the sample equals it is standard
speculative acceptance).

Requests arrive through ``submit`` from any thread. Their events are collected during a step and
handed over once per step through ``deliver`` (one wake-up of the event loop per step, not one per
token), which calls each job's ``sink`` there. ``Job.cancel`` frees the slot at the next step.

When a batch fails to decode, each request's part of it is decoded again alone: only a request
whose own tokens fail is failed, and the others go on.
"""

from __future__ import annotations

import codecs
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from homeport import metrics
from homeport.engine import step_shape
from homeport.engine.drafting import DEFAULT_DRAFT_TOKENS, DraftPolicy, DraftRequest, NgramDrafter
from homeport.engine.llama_types import EngineError, SamplingParams
from homeport.engine.prompt_cache import PromptCache, SavedState, common_prefix
from homeport.engine.step_cost import StepCost
from homeport.engine.stops import StopFinder
from homeport.errors import HomeportError

if TYPE_CHECKING:  # the jobs and events are the server's too, which loads llama.cpp only later
    from homeport.engine.draft_model import DraftModel
    from homeport.engine.llama import LlamaModel, Sampler

log = logging.getLogger(__name__)

DoneReason = Literal["stop", "length"]


@dataclass(frozen=True)
class TextChunk:
    text: str


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    prompt_cached: int
    generated: int
    queued_seconds: float
    prompt_seconds: float
    eval_seconds: float
    tokens: tuple[int, ...] = ()
    drafted: int = 0  # tokens drafted for this request, and of those, the ones the model confirmed
    draft_accepted: int = 0


@dataclass(frozen=True)
class Finished:
    reason: DoneReason
    stats: GenerationStats


@dataclass(frozen=True)
class Failed:
    error: HomeportError


Event = TextChunk | Finished | Failed
Sink = Callable[[Event], None]
Outbox = list[tuple["Job", Event]]
Deliver = Callable[[Outbox], None]

# With nothing running, a new request waits until no other one has arrived for GATHER_QUIET
# (at most GATHER_MAX), so that requests sent together are evaluated in one step rather than the
# first alone and the rest one step later. A lone request pays GATHER_QUIET once.
GATHER_QUIET = 0.003
GATHER_MAX = 0.02
# A prompt that shares at least this many more tokens with another slot's cache (busy or idle)
# than with its own slot's starts from a copy of that slot's cells: llama.cpp copies a sequence's
# whole KV stream, which costs about what evaluating a few dozen tokens does.
PREFIX_COPY_MIN = 64
# A slot state is kept for a returning conversation only when taking the slot drops this many of
# its tokens.
SAVE_MIN = 64


def deliver_directly(outbox: Outbox) -> None:
    """Call each sink, in order (run on the event loop by the manager's ``deliver``)."""
    for job, event in outbox:
        job.sink(event)


@dataclass
class Job:
    """One generation request as the scheduler sees it.

    ``sampler`` is built from ``sampling`` by whoever submits the job, before ``submit`` and off
    the scheduler's thread (compiling a grammar can take a while, and it must not hold up the
    model's other requests); the scheduler owns it from ``submit`` on.
    """

    prompt: list[int]
    sampling: SamplingParams
    sink: Sink
    sampler: Sampler | None = None
    num_predict: int = -1
    stop: tuple[str, ...] = ()
    draft_limit: int = -1  # the most tokens drafted in one step (-1: as the drafter sees fit)
    cancelled: bool = False
    # set while running
    generated: list[int] = field(default_factory=list)
    submitted_at: float = field(default_factory=time.perf_counter)
    admitted_at: float = 0.0
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    cached: int = 0
    drafted: int = 0
    draft_accepted: int = 0
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    _stops: StopFinder = field(init=False)

    def __post_init__(self) -> None:
        self._stops = StopFinder(self.stop)

    def cancel(self) -> None:
        """Stop this request at the next step (safe from any thread)."""
        self.cancelled = True

    def discard(self) -> None:
        """Free what a job that will never run holds."""
        if self.sampler is not None:
            self.sampler.free()


@dataclass
class EmbeddingJob:
    tokens: list[int]
    done: Callable[[list[float] | HomeportError], None]


@dataclass(frozen=True)
class Awaited:
    """A prompt prefix that another slot is evaluating, which this slot will copy (see
    ``Scheduler._leader``)."""

    leader: Slot
    job: Job  # the leader's request: when it leaves the slot, the wait is over
    length: int  # prompt tokens shared with it


@dataclass
class Slot:
    seq_id: int
    cache: list[int] = field(default_factory=list)  # tokens whose KV is in this sequence
    job: Job | None = None
    sampler: Sampler | None = None
    cursor: int = 0  # next prompt token to evaluate
    next_token: int = -1  # sampled, to be decoded in the next step
    last_used: float = 0.0
    drafter: NgramDrafter | None = None  # the running request's tokens, when speculating
    policy: DraftPolicy = field(default_factory=DraftPolicy)  # paces drafts from its own tokens
    model_policy: DraftPolicy = field(default_factory=DraftPolicy)  # and the draft model's
    awaiting: Awaited | None = None  # evaluates nothing until its leader has the prefix

    @property
    def prefilling(self) -> bool:
        return self.job is not None and self.cursor < len(self.job.prompt)


@dataclass
class Part:
    """One slot's tokens in a step's batch: its next token, or a chunk of its prompt."""

    slot: Slot
    tokens: list[int]
    start: int  # the position of the first token
    sample: bool  # whether to sample from the last token's logits
    drafted: int = 0  # the last ``drafted`` tokens are a draft, each with its logits
    drafted_by_model: bool = False  # the draft model's draft, not one from the request's tokens


class Scheduler:
    """Runs every request for one model; see the module docstring."""

    def __init__(self, model: LlamaModel, n_slots: int, n_batch: int, label: str,
                 deliver: Deliver, speculation: bool = False, cache_bytes: int = 0,
                 draft_model: DraftModel | None = None) -> None:
        from homeport.engine.llama import Batch  # where a model runs: llama.cpp is loaded

        self.model = model
        self._deliver = deliver
        self._outbox: Outbox = []
        self.n_ctx_per_seq = model.settings.n_ctx_per_seq
        self.slots = [Slot(seq_id) for seq_id in range(n_slots)]
        self.n_batch = n_batch
        self.label = label
        # A recurrent model's state cannot be rolled back past a refused draft.
        self.speculation = speculation and model.can_roll_back
        # Drafts come from the draft model when there is one, else from the request's own tokens.
        self.draft_model = draft_model if self.speculation else None
        self.step_cost = StepCost()  # what a drafted token's position costs a step, measured
        self.prompt_cache = PromptCache(cache_bytes) if cache_bytes > 0 else None
        # Pads and calls that keep every token's logits what they would be alone (step_shape),
        # where the kernels do not already; a recurrent model's pad could not be dropped again.
        self._shaped = (model.settings.same_logits_at_any_step and model.can_roll_back
                        and not model.steps_sum_alike)
        self.pending: deque[Job] = deque()
        self.embeddings: deque[EmbeddingJob] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._batch = Batch(n_batch)
        self.prompt_tokens_evaluated = 0
        self.prompt_tokens_cached = 0
        self._thread = threading.Thread(target=self._run, name=f"scheduler-{label}", daemon=True)
        self._thread.start()

    # --- called from other threads -------------------------------------------------------------

    def submit(self, job: Job) -> None:
        if job.sampler is None:
            raise ValueError("a job's sampler is built before it is submitted")
        with self._cond:
            if self._stopping:
                raise HomeportError("the model is being unloaded")
            self.pending.append(job)
            metrics.QUEUE_DEPTH.inc()
            self._cond.notify()

    def submit_embedding(self, job: EmbeddingJob) -> None:
        with self._cond:
            self.embeddings.append(job)
            self._cond.notify()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    @property
    def queued(self) -> int:
        return len(self.pending)

    @property
    def busy_slots(self) -> int:
        return sum(1 for slot in self.slots if slot.job is not None)

    def stop(self) -> None:
        """Fail what is left, end the thread and wait for it."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        self._batch.free()

    # --- the scheduler thread ------------------------------------------------------------------

    def _has_work(self) -> bool:
        return bool(self.pending or self.embeddings or any(s.job for s in self.slots))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._has_work():
                    self._cond.wait()
                if self._stopping:
                    break
            try:
                self._step()
            except Exception as exc:  # never let the thread die with requests waiting on it
                log.exception("scheduler step failed for %s", self.label)
                self._fail_running(exc)
            self._flush()
        self._fail_all(HomeportError("the model was unloaded before the request finished"))
        self._flush()

    def _emit(self, job: Job, event: Event) -> None:
        self._outbox.append((job, event))

    def _flush(self) -> None:
        if self._outbox:
            outbox, self._outbox = self._outbox, []
            self._deliver(outbox)

    def _gather(self) -> None:
        """Let requests that arrive together start together (see GATHER_QUIET)."""
        if self.busy_slots:
            return
        started = time.perf_counter()
        seen = len(self.pending)
        with self._cond:
            while seen < len(self.slots) and time.perf_counter() - started < GATHER_MAX:
                self._cond.wait(GATHER_QUIET)
                if len(self.pending) == seen:
                    return
                seen = len(self.pending)

    def _step(self) -> None:
        self._drop_cancelled()
        if self.embeddings:
            self._run_embedding(self.embeddings.popleft())
        if self.pending:
            self._gather()
        self._admit()
        self._resume_awaiting()
        for call in self._calls(self._plan()):
            started = time.perf_counter()
            try:
                outputs = self._decode(call)
            except EngineError as error:
                self._decode_apart(call, error)
                continue
            if self.speculation and all(part.sample and len(part.tokens) == part.drafted + 1
                                        for part in call):
                # Every position had logits, as a draft's have: what drafts cost is seen here.
                self.step_cost.observe(sum(len(part.tokens) for part in call),
                                       time.perf_counter() - started)
            self._sample(outputs)

    def _plan(self) -> list[Part]:
        """This step's batch: every running request's next token, then prompt chunks in the room
        left, oldest request first; moves each slot's cache and cursor past its part."""
        parts: list[Part] = []
        decoding = [slot for slot in self.slots if slot.job is not None and not slot.prefilling]
        room = self.n_batch - len(decoding)
        drafts = self._drafts(decoding, room)
        for slot in decoding:
            draft, by_model = drafts.get(slot.seq_id, ([], False))
            room -= len(draft)
            tokens = [slot.next_token, *draft]
            parts.append(Part(slot, tokens, len(slot.cache), sample=True, drafted=len(draft),
                              drafted_by_model=by_model))
            slot.cache.extend(tokens)
        for slot in sorted((s for s in self.slots if s.prefilling and s.awaiting is None),
                           key=lambda s: s.job.admitted_at if s.job else 0.0):
            if room <= 0:
                break
            assert slot.job is not None
            prompt = slot.job.prompt
            end = min(len(prompt), slot.cursor + room)
            parts.append(Part(slot, prompt[slot.cursor:end], slot.cursor,
                              sample=end == len(prompt)))
            slot.cache.extend(prompt[slot.cursor:end])
            evaluated = end - slot.cursor
            room -= evaluated
            self.prompt_tokens_evaluated += evaluated
            metrics.PROMPT_TOKENS.labels(self.label, "evaluated").inc(evaluated)
            slot.cursor = end
        return parts

    def _drafts(self, decoding: list[Slot], room: int) -> dict[int, tuple[list[int], bool]]:
        """The tokens to verify after each decoding slot's next token this step, by sequence id,
        and whether the draft model made them (none without speculation), within ``room`` tokens
        of the batch. The request's own tokens are asked first: copying needs no model."""
        drafts: dict[int, tuple[list[int], bool]] = {}
        requests: list[DraftRequest] = []
        break_even = self.step_cost.break_even(len(decoding))
        for slot in decoding:
            limit = self._draft_limit(slot, room, slot.policy, break_even)
            draft = slot.drafter.draft(limit) if slot.drafter is not None and limit > 0 else []
            if draft:
                drafts[slot.seq_id] = (draft, False)
                room -= len(draft)
                continue
            if self.draft_model is None:
                continue
            limit = self._draft_limit(slot, room, slot.model_policy, break_even)
            if slot.job is not None and slot.job.draft_limit < 0:
                # Each of a draft model's tokens costs it a decode: a request that sets no limit
                # gets Ollama's default for separate draft models.
                limit = min(limit, DEFAULT_DRAFT_TOKENS)
            if limit > 0:
                requests.append(DraftRequest(slot.seq_id, [*slot.cache, slot.next_token], limit))
                room -= limit
        if requests:
            drafts.update((seq_id, (draft, True))
                          for seq_id, draft in self._model_drafts(requests).items())
        return drafts

    def _model_drafts(self, requests: list[DraftRequest]) -> dict[int, list[int]]:
        assert self.draft_model is not None
        try:
            return self.draft_model.draft(requests)
        except EngineError as error:  # the answer does not need a draft: go on without one
            log.warning("%s: the draft model failed (%s); this step goes without drafts",
                        self.label, error.message)
            self.draft_model.reset()
            return {}

    def _draft_limit(self, slot: Slot, room: int, policy: DraftPolicy, break_even: float) -> int:
        """The longest draft the slot may verify this step (0: none), of tokens each with at
        least a ``break_even`` chance of being confirmed; counts a paused step of ``policy``."""
        job = slot.job
        if slot.drafter is None or job is None or job.draft_limit == 0:
            return 0
        # Room in the batch and the context, and no more than the request may still generate
        # after the next token.
        limit = min(room, self.n_ctx_per_seq - len(slot.cache) - 2)
        if job.num_predict >= 0:
            limit = min(limit, job.num_predict - len(job.generated) - 1)
        if job.draft_limit > 0:
            limit = min(limit, job.draft_limit)
        if limit <= 0:
            return 0
        return min(limit, policy.allowed(break_even))

    def _calls(self, parts: list[Part]) -> list[list[Part]]:
        """The step's ``llama_decode`` calls: one, or, where a token's logits must not depend on
        the step, as many as ``engine.step_shape`` needs."""
        if not parts:
            return []
        if not self._shaped:
            return [parts]
        groups = step_shape.calls([(part.slot.seq_id, len(part.tokens)) for part in parts],
                                  self.n_batch)
        return [[parts[index] for index in group] for group in groups]

    def _decode(self, parts: list[Part]) -> list[tuple[Part, list[int]]]:
        """Decode ``parts`` in one batch; the parts to sample and their logits' batch indexes
        (the last prompt token's, or the next token's and each drafted token's)."""
        batch = self._batch
        batch.clear()
        outputs: list[tuple[Part, list[int]]] = []
        padded: list[Part] = []
        # In sequence order: with one K/V stream per slot, llama.cpp puts sequences in one
        # ubatch (one pass over the weights) only when their ids follow each other in the batch.
        for part in sorted(parts, key=lambda part: part.slot.seq_id):
            last = len(part.tokens) - 1
            first_output = last - part.drafted
            indexes = []
            for offset, token in enumerate(part.tokens):
                wanted = part.sample and offset >= first_output
                index = batch.add(token, part.start + offset, part.slot.seq_id, wanted)
                if wanted:
                    indexes.append(index)
            if self._shaped and len(part.tokens) < step_shape.MIN_TOKENS:
                batch.add(part.tokens[-1], part.start + len(part.tokens), part.slot.seq_id, False)
                padded.append(part)
            if part.sample:
                outputs.append((part, indexes))
        self.model.decode(batch)
        for part in padded:
            if not self.model.forget(part.slot.seq_id, part.start + len(part.tokens)):
                raise EngineError("the cell of a pad token could not be dropped")
        return outputs

    def _decode_apart(self, parts: list[Part], error: EngineError) -> None:
        """The batch failed: decode each request's part alone, so that only a request whose own
        tokens fail is failed, and the others go on as if nothing happened."""
        log.warning("%s: %s; decoding the step's %d requests one at a time", self.label,
                    error.message, len(parts))
        for part in parts:
            try:
                # Whatever the failed call left in this sequence from the part's start is redone.
                if not self.model.forget(part.slot.seq_id, part.start):
                    raise error
                outputs = self._decode([part])
            except EngineError as exc:
                self._fail(part.slot, exc)
                continue
            self._sample(outputs)

    def _sample(self, outputs: list[tuple[Part, list[int]]]) -> None:
        now = time.perf_counter()
        for part, indexes in outputs:
            slot = part.slot
            if not part.drafted:
                assert slot.sampler is not None
                self._accept(slot, slot.sampler.sample(self.model, indexes[0]), now)
                continue
            self._sample_draft(part, indexes, now)

    def _sample_draft(self, part: Part, indexes: list[int], now: float) -> None:
        """Sample the next token and the draft's positions in order while the sampler picks the
        drafted tokens; drop the cells of the drafted tokens it did not confirm."""
        slot, job = part.slot, part.slot.job
        assert slot.sampler is not None
        assert job is not None
        draft = part.tokens[1:]
        del slot.cache[part.start + 1:]  # the draft's tokens count once confirmed
        job.drafted += len(draft)  # counted first: a token below may finish the request
        confirmed = 0
        for position, index in enumerate(indexes):
            token = slot.sampler.sample(self.model, index)
            if not self._accept(slot, token, now):
                break
            if position == len(draft) or token != draft[position]:
                break
            slot.cache.append(token)
            confirmed += 1
            job.draft_accepted += 1
        if not self.model.forget(slot.seq_id, len(slot.cache)):
            raise EngineError("the cells of a refused draft could not be dropped")
        policy = slot.model_policy if part.drafted_by_model else slot.policy
        policy.record(len(draft), confirmed)
        source = "model" if part.drafted_by_model else "prompt"
        metrics.DRAFTED_TOKENS.labels(self.label, source).inc(len(draft))
        metrics.DRAFT_ACCEPTED_TOKENS.labels(self.label, source).inc(confirmed)

    def _accept(self, slot: Slot, token: int, now: float) -> bool:
        """Take one sampled token; False when it ended the request."""
        job = slot.job
        assert job is not None
        if not job.first_token_at:
            job.first_token_at = now
            metrics.TIME_TO_FIRST_TOKEN.labels(self.label).observe(now - job.submitted_at)
        elif job.last_token_at:
            metrics.INTER_TOKEN_LATENCY.labels(self.label).observe(now - job.last_token_at)
        job.last_token_at = now
        if self.model.is_end_of_generation(token):
            self._finish(slot, "stop")
            return False
        job.generated.append(token)
        if slot.drafter is not None:
            slot.drafter.append(token)
        metrics.GENERATED_TOKENS.labels(self.label).inc()
        text = job._decoder.decode(self.model.token_bytes(token))
        if self._emit_text(job, text):
            self._finish(slot, "stop")
            return False
        if 0 <= job.num_predict <= len(job.generated) or len(slot.cache) + 1 >= self.n_ctx_per_seq:
            self._finish(slot, "length")
            return False
        slot.next_token = token
        return True

    def _emit_text(self, job: Job, text: str) -> bool:
        """Send text on, holding back what may be the start of a stop string; True on a stop."""
        ready, stopped = job._stops.feed(text)
        if ready:
            self._emit(job, TextChunk(ready))
        return stopped

    def _finish(self, slot: Slot, reason: DoneReason) -> None:
        job = slot.job
        assert job is not None
        rest = job._stops.flush() + job._decoder.decode(b"", final=True)
        if rest:
            self._emit(job, TextChunk(rest))
        end = job.last_token_at or time.perf_counter()
        stats = GenerationStats(
            prompt_tokens=len(job.prompt),
            prompt_cached=job.cached,
            generated=len(job.generated),
            queued_seconds=job.admitted_at - job.submitted_at,
            prompt_seconds=(job.first_token_at or end) - job.admitted_at,
            eval_seconds=end - (job.first_token_at or end),
            tokens=tuple(job.prompt + job.generated),
            drafted=job.drafted,
            draft_accepted=job.draft_accepted,
        )
        self._release(slot)
        self._emit(job, Finished(reason, stats))

    def _release(self, slot: Slot) -> None:
        if slot.sampler is not None:
            slot.sampler.free()
            slot.sampler = None
        if slot.job is not None:
            metrics.BUSY_SLOTS.labels(self.label).dec()
        slot.job = None
        slot.drafter = None
        slot.awaiting = None
        slot.last_used = time.perf_counter()

    def _drop_cancelled(self) -> None:
        with self._cond:
            kept = deque(job for job in self.pending if not job.cancelled)
            metrics.QUEUE_DEPTH.dec(len(self.pending) - len(kept))
            dropped = [job for job in self.pending if job.cancelled]
            self.pending = kept
        for job in dropped:
            job.discard()
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled:
                if slot.prefilling:
                    # Only part of the prompt is in the cache: keep exactly that part.
                    slot.cache = slot.cache[:slot.cursor]
                self._release(slot)

    def _admit(self) -> None:
        while True:
            free = [slot for slot in self.slots if slot.job is None]
            if not free:
                return
            with self._cond:
                if not self.pending:
                    return
                job = self.pending.popleft()
                metrics.QUEUE_DEPTH.dec()
            if job.cancelled:
                job.discard()
                continue
            slot = max(free, key=lambda s: (common_prefix(s.cache, job.prompt), -s.last_used))
            self._assign(slot, job)

    def _prefix_donor(self, slot: Slot, prompt: list[int], own: int) -> tuple[Slot | None, int]:
        """The other slot whose cache shares the longest prefix with ``prompt``, if it is worth
        copying (PREFIX_COPY_MIN more tokens than the slot's own cache shares), and that length."""
        donor, longest = None, own + PREFIX_COPY_MIN - 1
        for other in self.slots:
            if other is not slot:
                shared = common_prefix(other.cache, prompt)
                if shared > longest:
                    donor, longest = other, shared
        return donor, longest

    def _save_before_reuse(self, slot: Slot, reuse: int) -> None:
        """Keep the slot's state in the prompt cache if taking it drops enough of its tokens."""
        if self.prompt_cache is None or len(slot.cache) - reuse < SAVE_MIN:
            return
        state = SavedState(tuple(slot.cache), self.model.save_sequence(slot.seq_id))
        change = self.prompt_cache.put(state)
        metrics.PROMPT_CACHE_BYTES.labels(self.label).inc(change)
        metrics.PROMPT_CACHE_EVENTS.labels(self.label, "saved").inc()

    def _restore(self, slot: Slot, state: SavedState) -> bool:
        """Start the slot from a kept state."""
        self.model.forget(slot.seq_id)
        if not self.model.restore_sequence(slot.seq_id, state.data):
            self.model.forget(slot.seq_id)
            slot.cache = []
            return False
        slot.cache = list(state.tokens)
        metrics.PROMPT_CACHE_EVENTS.labels(self.label, "restored").inc()
        return True

    def _leader(self, slot: Slot, prompt: list[int], own: int) -> Awaited | None:
        """Another slot still evaluating a prompt that shares at least PREFIX_COPY_MIN more
        tokens with ``prompt`` than ``own``: rather than evaluate the same tokens beside it,
        this slot waits and copies them: the leader gets the batch's room alone and gets there
        sooner, so four editors sending one system prompt together evaluate it once, not four
        times side by side.
        """
        if not self.model.can_roll_back:  # a recurrent state cannot be cut back to the prefix
            return None
        found: Awaited | None = None
        longest = own + PREFIX_COPY_MIN - 1
        for other in self.slots:
            if (other is slot or other.job is None or other.awaiting is not None
                    or not other.prefilling):
                continue
            shared = common_prefix(other.job.prompt, prompt)
            if shared > longest:
                found, longest = Awaited(other, other.job, shared), shared
        return found

    def _copy_cells(self, donor: Slot, slot: Slot) -> None:
        # The donor's cache is exactly what is decoded: this runs before the step's batch.
        self.model.copy_sequence(donor.seq_id, slot.seq_id)
        slot.cache = list(donor.cache)
        metrics.PROMPT_PREFIX_COPIES.labels(self.label).inc()
        log.debug("%s: slot %d starts from slot %d's cells", self.label, slot.seq_id,
                  donor.seq_id)

    def _assign(self, slot: Slot, job: Job) -> None:
        reuse = common_prefix(slot.cache, job.prompt)
        donor, shared = self._prefix_donor(slot, job.prompt, reuse)
        kept = (self.prompt_cache.best(job.prompt, shared,
                                       whole=not self.model.saved_state_can_be_cut)
                if self.prompt_cache else None)
        # Saved after the lookup: keeping this slot's state may evict the one found, which is
        # restored all the same.
        self._save_before_reuse(slot, reuse)
        if not (kept and self._restore(slot, kept[0])) and donor is not None:
            self._copy_cells(donor, slot)
        slot.sampler = job.sampler
        slot.job = job
        if self.speculation:
            slot.drafter = NgramDrafter(job.prompt)
            slot.policy = DraftPolicy()
            slot.model_policy = DraftPolicy()
        slot.awaiting = self._leader(slot, job.prompt, common_prefix(slot.cache, job.prompt))
        job.admitted_at = time.perf_counter()
        metrics.BUSY_SLOTS.labels(self.label).inc()
        self._start_prompt(slot, job)

    def _resume_awaiting(self) -> None:
        """Slots whose leader has evaluated the shared prefix (or left) go on from its cells."""
        for slot in self.slots:
            awaited, job = slot.awaiting, slot.job
            if awaited is None or job is None:
                continue
            if awaited.leader.job is awaited.job and awaited.leader.cursor < awaited.length:
                continue
            slot.awaiting = None
            donor, _ = self._prefix_donor(slot, job.prompt, slot.cursor)
            if donor is not None:
                self._copy_cells(donor, slot)
                self._start_prompt(slot, job)

    def _start_prompt(self, slot: Slot, job: Job) -> None:
        """Keep the slot's cells that match the prompt; evaluation starts after them."""
        reuse = common_prefix(slot.cache, job.prompt)
        if reuse == len(job.prompt):
            reuse -= 1  # the last prompt token is evaluated again to get its logits
        if not self.model.forget(slot.seq_id, reuse):
            reuse = 0
        slot.cache = slot.cache[:reuse]
        slot.cursor = reuse
        gained, job.cached = reuse - job.cached, reuse
        self.prompt_tokens_cached += gained
        metrics.PROMPT_TOKENS.labels(self.label, "cached").inc(max(gained, 0))
        log.debug("%s: slot %d takes a %d-token prompt, %d from cache%s", self.label,
                  slot.seq_id, len(job.prompt), reuse,
                  f", waiting for slot {slot.awaiting.leader.seq_id} to evaluate "
                  f"{slot.awaiting.length} shared tokens" if slot.awaiting else "")

    def _run_embedding(self, job: EmbeddingJob) -> None:
        try:
            job.done(self.model.embed(job.tokens))
        except HomeportError as exc:
            job.done(exc)

    def _fail(self, slot: Slot, error: HomeportError) -> None:
        """End the slot's request with ``error``, dropping the slot's cache (it may be unsound)."""
        job = slot.job
        assert job is not None
        self.model.forget(slot.seq_id)
        slot.cache = []
        self._release(slot)
        self._emit(job, Failed(error))

    def _fail_running(self, exc: Exception) -> None:
        error = exc if isinstance(exc, HomeportError) else HomeportError(f"engine failure: {exc}")
        for slot in self.slots:
            if slot.job is not None:
                self._fail(slot, error)

    def _fail_all(self, error: HomeportError) -> None:
        self._fail_running(error)
        with self._cond:
            pending, self.pending = list(self.pending), deque()
            embeddings, self.embeddings = list(self.embeddings), deque()
        metrics.QUEUE_DEPTH.dec(len(pending))
        for job in pending:
            job.discard()
            self._emit(job, Failed(error))
        for embedding in embeddings:
            embedding.done(error)
