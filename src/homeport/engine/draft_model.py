"""A draft model: a smaller model with the same vocabulary that guesses the next few tokens.

Named by a Modelfile's DRAFT line, it runs in the target model's runner process, on the CPU, with
a context of its own (one sequence per slot, as long as the target's). Before each scheduler step
that decodes, every slot that may draft brings its tokens so far (prompt, output, and the next
token the target sampled); the draft model first catches its cache up with them (usually one or
two tokens: what the target confirmed since the last draft), then decodes greedily, all slots in
one batch per position, until each slot has its number of tokens or the draft model is unsure
(the token's probability under P_MIN), as llama.cpp's speculative example stops. The target then
verifies the drafts as it verifies n-gram drafts (``engine.scheduler``), so the answer is the same
with any draft model, good or bad: a draft only changes how many tokens one step confirms.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from homeport.engine.drafting import DraftRequest
from homeport.engine.llama import Batch, EngineError, LlamaModel
from homeport.engine.llama_types import ContextSettings
from homeport.engine.prompt_cache import common_prefix

log = logging.getLogger(__name__)

P_MIN = 0.75  # a draft ends before a token the draft model gives less probability than this
# Token ids whose text is compared between the two vocabularies, beyond their sizes and types:
# every VOCAB_STRIDE-th one (checking all 262,144 of a large vocabulary takes seconds).
VOCAB_STRIDE = 97
VOCAB_SIZE_SLACK = 128  # vocabularies padded to different sizes still match (llama.cpp allows 128)


def draft_context_settings(target: ContextSettings) -> ContextSettings:
    """The draft model's context: one sequence per slot of the target's length, all on the CPU,
    without drafts of its own or a prompt cache."""
    return replace(target, draft_model=None, speculation=False, cache_ram=0, num_gpu=0)


def check_same_vocabulary(target: LlamaModel, draft: LlamaModel) -> None:
    """EngineError unless ``draft`` tokenizes as ``target`` does (sizes within the slack, and the
    sampled tokens' texts equal): a draft in another vocabulary would never be taken."""
    if abs(target.n_vocab - draft.n_vocab) > VOCAB_SIZE_SLACK:
        raise EngineError(f"the draft model's vocabulary has {draft.n_vocab} tokens and the "
                          f"model's {target.n_vocab}: a draft model needs the model's vocabulary")
    shared = min(target.n_vocab, draft.n_vocab)
    for token in range(0, shared, VOCAB_STRIDE):
        if target.token_bytes(token, special=True) != draft.token_bytes(token, special=True):
            raise EngineError(f"the draft model's token {token} differs from the model's: a "
                              "draft model needs the model's vocabulary")


class DraftModel:
    """Drafts for the target's slots; see the module docstring. Used from the target's scheduler
    thread only."""

    def __init__(self, model: LlamaModel, n_vocab_target: int) -> None:
        self.model = model
        self._n_vocab = min(model.n_vocab, n_vocab_target)  # a token past it cannot be verified
        self._batch = Batch(model.settings.n_batch)
        self._cache: dict[int, list[int]] = {}  # seq_id -> tokens whose K/V this context holds

    def draft(self, requests: list[DraftRequest]) -> dict[int, list[int]]:
        """Each request's draft (possibly empty), by sequence id."""
        wanted = [request for request in requests if request.limit > 0 and request.tokens]
        drafts: dict[int, list[int]] = {request.seq_id: [] for request in requests}
        if not wanted:
            return drafts
        logits_at = self._catch_up(wanted)
        active = {request.seq_id: request for request in wanted}
        while active:
            for seq_id, index in logits_at.items():
                token, probability = self._best(index)
                request = active[seq_id]
                if probability < P_MIN or token >= self._n_vocab:
                    del active[seq_id]
                    continue
                drafts[seq_id].append(token)
                if len(drafts[seq_id]) >= request.limit:
                    del active[seq_id]
            logits_at = self._extend({seq_id: drafts[seq_id][-1] for seq_id in active})
        return drafts

    def forget(self, seq_id: int) -> None:
        """Drop a sequence's cells (its slot's cache was dropped or replaced)."""
        self.model.forget(seq_id)
        self._cache.pop(seq_id, None)

    def reset(self) -> None:
        """Drop every sequence's cells (a failed decode leaves them unknown)."""
        for seq_id in list(self._cache):
            self.forget(seq_id)

    def close(self) -> None:
        self._batch.free()
        self.model.close()

    def _catch_up(self, requests: list[DraftRequest]) -> dict[int, int]:
        """Decode what each sequence's cache lacks of its tokens (at least the last token again,
        for its logits); the batch index of each sequence's last-token logits."""
        pending: list[tuple[int, int, list[int]]] = []  # seq_id, first position, tokens
        for request in requests:
            cached = self._cache.get(request.seq_id, [])
            keep = min(common_prefix(cached, request.tokens), len(request.tokens) - 1)
            if not self.model.forget(request.seq_id, keep):
                keep = 0
            self._cache[request.seq_id] = request.tokens[:keep]
            pending.append((request.seq_id, keep, request.tokens[keep:]))
        logits_at: dict[int, int] = {}
        capacity = self._batch.capacity
        while pending:
            batch = self._batch
            batch.clear()
            rest: list[tuple[int, int, list[int]]] = []
            for seq_id, start, tokens in pending:
                room = capacity - batch.n_tokens
                if room <= 0:
                    rest.append((seq_id, start, tokens))
                    continue
                chunk, later = tokens[:room], tokens[room:]
                for offset, token in enumerate(chunk):
                    last = not later and offset == len(chunk) - 1
                    index = batch.add(token, start + offset, seq_id, last)
                    if last:
                        logits_at[seq_id] = index
                self._cache[seq_id].extend(chunk)
                if later:
                    rest.append((seq_id, start + len(chunk), later))
            self.model.decode(batch)
            pending = rest
        return logits_at

    def _extend(self, tokens: dict[int, int]) -> dict[int, int]:
        """Decode one drafted token per sequence; the batch index of each one's logits."""
        if not tokens:
            return {}
        batch = self._batch
        batch.clear()
        logits_at: dict[int, int] = {}
        for seq_id, token in tokens.items():
            cache = self._cache[seq_id]
            logits_at[seq_id] = batch.add(token, len(cache), seq_id, True)
            cache.append(token)
        self.model.decode(batch)
        return logits_at

    def _best(self, index: int) -> tuple[int, float]:
        """The most likely next token at ``index`` and its probability."""
        logits = self.model.logits(index)
        token = int(np.argmax(logits))
        top = logits[token]
        return token, float(1.0 / np.exp(logits - top).sum())
