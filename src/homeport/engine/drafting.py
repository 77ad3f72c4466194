"""Draft tokens for speculative decoding, taken from the request's own tokens.

An inline edit copies most of its prompt: once the model has written a few tokens of a line that is
in the prompt, the tokens that followed them there are a good guess for what comes next. The
scheduler appends such a draft after a slot's next token, decodes them all in one step (with the
other slots' tokens), and keeps the drafted tokens for as long as the model would have sampled
exactly them. Making a draft costs a few dictionary lookups; a wrong one costs the extra positions
of one batched decode, so the draft length adapts to how often drafts are taken, and drafting pauses
for a while after several drafts in a row were refused outright. A draft is also no longer than
pays: its last token must be likely enough to be confirmed (the request's recent share of confirmed
drafted tokens, to the power of its place in the draft) to be worth a position of the step
(``engine.step_cost``); where none is, drafting pauses too and looks again with one token. A policy
of its own paces a draft model's drafts (``engine.draft_model``, asked when the request's own tokens
have none), which are also capped at a few tokens a step: each one costs the draft model a decode.
"""

from __future__ import annotations

from dataclasses import dataclass

# How many of the latest tokens must match earlier ones for a draft, longest tried first: a short
# match alone often points at a recent repetition rather than the copied text (replayed on Gemma's
# answer to the bench's edit: 3 tokens alone, 55% of drafted tokens taken in 125 steps; 16, 8 or 3,
# 83% in 35; measured: 106 against 71 tokens/s).
NGRAMS = (16, 8, 3)
DRAFT_START = 8
DRAFT_MIN = 2
DRAFT_MAX = 32
MISSES_BEFORE_PAUSE = 3  # drafts in a row with no token taken
PAUSE_START = 8  # steps without drafting after that; doubles while drafts keep missing
PAUSE_MAX = 256
# The share of drafted tokens confirmed, counted as if from this many tokens before the request's
# own drafts: its ordinary chat's are ~0.5-0.7 (SmolLM2), an edit's copy ~0.95 (Gemma).
PRIOR_CONFIRMED = 3.0
PRIOR_TRIED = 4.0
FORGET = 0.9  # each draft's weight in that share, per later draft
DEFAULT_DRAFT_TOKENS = 4  # a draft model's, per step: Ollama's default (draft_num_predict)


class NgramDrafter:
    """Finds the latest earlier occurrence of the longest of a sequence's last ``NGRAMS`` tokens
    and drafts the tokens that followed it."""

    def __init__(self, tokens: list[int]) -> None:
        self._tokens: list[int] = []
        # For each n: n-gram -> the index of the token that followed its latest occurrence; an
        # n-gram is indexed once a token follows it, so the sequence's own last n tokens are never
        # their own match.
        self._follows: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in NGRAMS}
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        tokens = self._tokens
        for n, follows in self._follows.items():
            if len(tokens) >= n:
                follows[tuple(tokens[-n:])] = len(tokens)
        tokens.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens that followed the longest matching n-gram the previous time it
        occurred."""
        tokens = self._tokens
        if limit <= 0:
            return []
        for n, follows in self._follows.items():
            if len(tokens) < n:
                continue
            start = follows.get(tuple(tokens[-n:]))
            if start is not None:
                return tokens[start:start + limit]
        return []


@dataclass
class DraftPolicy:
    """How long one request's next draft may be, from how its earlier drafts fared."""

    length: int = DRAFT_START
    misses: int = 0
    paused_steps: int = 0
    pause: int = PAUSE_START
    # Drafted tokens the model confirmed, of those it was asked about (a token after the first
    # refused one is never looked at), decayed by FORGET a draft.
    confirmed: float = PRIOR_CONFIRMED
    tried: float = PRIOR_TRIED
    probe: bool = False  # the next draft looks again, after a pause for want of worth

    @property
    def acceptance(self) -> float:
        """The chance that a drafted token is confirmed, given that the one before it was."""
        return self.confirmed / self.tried

    def allowed(self, break_even: float = 0.0) -> int:
        """The longest draft to try this step (0: none), counting a paused step: no longer than
        ``length`` and than the tokens likely enough to be confirmed to reach ``break_even``."""
        if self.paused_steps > 0:
            self.paused_steps -= 1
            return 0
        worth = self._worth(break_even)
        if worth > 0:
            self.probe = False
            return worth
        if self.probe:  # after a pause: one token, to see whether drafts are taken again
            return 1
        self._pause()
        self.probe = True
        return 0

    def _worth(self, break_even: float) -> int:
        """How many tokens of a draft are each likely enough to be confirmed, up to ``length``."""
        chance, worth = 1.0, 0
        while worth < self.length:
            chance *= self.acceptance
            if chance < break_even:
                break
            worth += 1
        return worth

    def record(self, drafted: int, taken: int) -> None:
        """Adapt to a draft of ``drafted`` tokens of which the first ``taken`` were right."""
        if drafted == 0:
            return
        self.confirmed = self.confirmed * FORGET + taken
        self.tried = self.tried * FORGET + taken + (1 if taken < drafted else 0)
        if taken == drafted:
            self.length = min(DRAFT_MAX, self.length * 2)
        else:
            self.length = max(DRAFT_MIN, taken + 1)
        probed, self.probe = self.probe, False
        if taken > 0:
            self.misses = 0
            if not probed:  # drafting paid again: a later pause starts short
                self.pause = PAUSE_START
            return
        self.misses += 1
        if self.misses >= MISSES_BEFORE_PAUSE:
            self.misses = 0
            self._pause()

    def _pause(self) -> None:
        self.paused_steps = self.pause
        self.pause = min(PAUSE_MAX, self.pause * 2)


@dataclass
class DraftRequest:
    """What a draft model is asked for one slot: its tokens so far (the last one not yet decoded
    by the model) and the most tokens to draft after them (``engine.draft_model``)."""

    seq_id: int
    tokens: list[int]
    limit: int
