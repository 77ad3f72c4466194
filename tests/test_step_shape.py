"""The calls a step's parts go in where a token's logits must not depend on the step
(``engine.step_shape``): each must be one ubatch to llama.cpp, every sequence in it with at least
two tokens, pads included. The logits themselves: ``tests/test_step_invariance.py``."""

from __future__ import annotations

from homeport.engine.step_shape import MIN_TOKENS, calls, padded


def test_a_lone_token_takes_a_pad() -> None:
    assert MIN_TOKENS == 2
    assert [padded(n) for n in (1, 2, 5)] == [2, 2, 5]


def test_consecutive_sequences_with_as_many_tokens_share_a_call() -> None:
    # Four slots decoding one token each (a pad each), in any order: one call, in sequence order.
    assert calls([(2, 1), (0, 1), (3, 1), (1, 1)], 512) == [[1, 3, 0, 2]]
    # A lone token and a one-token draft take as many tokens with the pad.
    assert calls([(0, 1), (1, 2)], 512) == [[0, 1]]


def test_other_counts_and_gaps_between_ids_start_a_call() -> None:
    # llama.cpp would split seq 0's 2 and seq 1's 3 into 2 + 2, then seq 1's last token alone.
    assert calls([(0, 2), (1, 3)], 512) == [[0], [1]]
    # Ids 0 and 2 do not follow each other: llama.cpp would make two ubatches anyway.
    assert calls([(0, 1), (2, 1)], 512) == [[0], [1]]
    assert calls([(0, 1), (1, 1), (2, 300), (3, 1)], 512) == [[0, 1], [2], [3]]


def test_a_call_stays_within_the_batch() -> None:
    assert calls([(seq, 1) for seq in range(5)], 6) == [[0, 1, 2], [3, 4]]
    assert calls([], 512) == []
