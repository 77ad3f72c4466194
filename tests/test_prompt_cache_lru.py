"""The RAM prompt cache's bookkeeping (no model needed): budget, LRU order, prefixes."""

from __future__ import annotations

from homeport.engine.prompt_cache import PromptCache, SavedState


def state(tokens: list[int], size: int) -> SavedState:
    return SavedState(tuple(tokens), bytes(size))


def test_the_least_recently_used_state_makes_room() -> None:
    cache = PromptCache(budget=100)
    assert cache.put(state([1, 2, 3], 40)) == 40
    cache.put(state([4, 5, 6], 40))
    assert cache.best([1, 2, 3, 9], longer_than=2) is not None  # [1, 2, 3] is now the newest
    assert cache.put(state([7, 8, 9], 40)) == 0  # 40 in, [4, 5, 6] out
    assert cache.used == 80
    assert cache.best([4, 5, 6], longer_than=0) is None
    assert cache.best([1, 2, 3], longer_than=0) is not None


def test_a_state_over_the_budget_is_not_kept() -> None:
    cache = PromptCache(budget=10)
    assert cache.put(state([1], 11)) == 0
    assert len(cache) == 0


def test_a_longer_state_replaces_the_states_of_its_prefixes() -> None:
    cache = PromptCache(budget=1000)
    cache.put(state([1, 2], 10))
    cache.put(state([1, 2, 3, 4], 20))
    assert len(cache) == 1
    assert cache.used == 20


def test_the_longest_shared_prefix_wins_when_long_enough() -> None:
    cache = PromptCache(budget=1000)
    cache.put(state([1, 2, 3, 4], 10))
    cache.put(state([1, 2, 9], 10))
    found = cache.best([1, 2, 3, 7], longer_than=1)
    assert found is not None
    assert found[0].tokens == (1, 2, 3, 4)
    assert found[1] == 3
    assert cache.best([1, 2, 3, 7], longer_than=3) is None
