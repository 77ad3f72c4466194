"""Slot states kept in host memory after another conversation took their slot.

With more conversations than slots, a slot reused by another conversation loses the first one's
cells, and that conversation's next turn would evaluate its whole history again. Before a slot's
cells are dropped, the scheduler saves the slot's state (llama.cpp's per-sequence state: its
tokens' K/V cells) here, and a prompt that returns with that prefix restores it instead. Entries
are kept least recently used first, within a byte budget.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


def common_prefix(a: list[int] | tuple[int, ...], b: list[int] | tuple[int, ...]) -> int:
    """How many tokens ``a`` and ``b`` share from the start. Slices are compared (in C, a few
    microseconds for thousands of tokens), halving the range that holds the first difference:
    the scheduler and a draft model ask this for every slot's context, the latter every step."""
    first, second = tuple(a), tuple(b)
    low, high = 0, min(len(first), len(second))
    if first[:high] == second[:high]:
        return high
    # first[:low] == second[:low], and the first difference lies in [low, high)
    while high - low > 1:
        middle = (low + high) // 2
        if first[low:middle] == second[low:middle]:
            low = middle
        else:
            high = middle
    return low


@dataclass(frozen=True)
class SavedState:
    tokens: tuple[int, ...]  # the tokens whose cells the state holds, from position 0
    data: bytes  # llama_state_seq_get_data's bytes


class PromptCache:
    """Saved slot states, least recently used first, within ``budget`` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._entries: OrderedDict[tuple[int, ...], SavedState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, state: SavedState) -> int:
        """Keep ``state`` (and drop what it makes useless: states of its own prefixes), evicting
        the least recently used; returns the change in bytes held."""
        before = self.used
        if len(state.data) > self.budget:
            return 0
        for tokens in [t for t in self._entries if state.tokens[:len(t)] == t]:
            self._drop(tokens)
        while self.used + len(state.data) > self.budget:
            self._drop(next(iter(self._entries)))
        self._entries[state.tokens] = state
        self.used += len(state.data)
        return self.used - before

    def best(self, prompt: list[int], longer_than: int,
             whole: bool = False) -> tuple[SavedState, int] | None:
        """The state sharing the longest prefix with ``prompt``, if over ``longer_than`` tokens,
        and that prefix's length; it becomes the most recently used. ``whole``: only a state that
        ``prompt`` continues from its last token on (a model with a sliding window: see
        ``LlamaModel.saved_state_can_be_cut``)."""
        found: tuple[SavedState, int] | None = None
        for state in self._entries.values():
            shared = common_prefix(state.tokens, prompt)
            if whole and shared < len(state.tokens) - 1:
                continue
            if shared > longer_than and (found is None or shared > found[1]):
                found = (state, shared)
        if found is not None:
            self._entries.move_to_end(found[0].tokens)
        return found

    def _drop(self, tokens: tuple[int, ...]) -> None:
        self.used -= len(self._entries.pop(tokens).data)
