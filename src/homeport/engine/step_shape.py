"""How a step's tokens go to llama.cpp where a token's logits must not depend on the step and
the kernels alone do not make them so (``LlamaModel.steps_sum_alike``): an engine without
homeport's patch (``engine-patches/``; ``kernel_environment`` says what it mends).

There ggml multiplies a matrix by the vector of a single token with its own dot products, and by
two or more tokens with llamafile's tiles, which sum in another order, and flash attention takes
another path for a lone query over 512 or more cells. Two or more tokens a step take the same
paths whatever their number (below 64 queries): measured on Gemma 3 270M and SmolLM2-135M, flash
attention off, 45 to 48 of 48 positions differ between 1 token a step and 2 to 16, none once the
lone token gets a pad.

With one K/V stream per slot, llama.cpp multiplies attention per sequence and splits a batch
into ubatches holding the same number of tokens from each of a run of sequences with consecutive
ids (``llama_batch_allocr::split_equal``); what is left over goes to later ubatches, possibly one
token at a time. So where logits must be exact, every sequence in a ``llama_decode`` call gets at
least ``MIN_TOKENS`` (a part of one token gets a pad token after it: decoded without logits, its
cell dropped after the step), and the parts go in calls that llama.cpp keeps whole: sequence ids
that follow each other, each with the same number of tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

MIN_TOKENS = 2


def padded(n_tokens: int) -> int:
    """The tokens a part of ``n_tokens`` takes in a call, its pad included."""
    return max(n_tokens, MIN_TOKENS)


def calls(parts: Sequence[tuple[int, int]], capacity: int) -> list[list[int]]:
    """Group ``parts`` (sequence id, number of tokens) into ``llama_decode`` calls that llama.cpp
    decodes as one ubatch each: consecutive sequence ids, the same padded number of tokens, at most
    ``capacity`` tokens with pads. Returns the parts' indexes, call by call, in sequence order."""
    order = sorted(range(len(parts)), key=lambda index: parts[index][0])
    groups: list[list[int]] = []
    for index in order:
        seq_id, n_tokens = parts[index]
        if groups:
            group = groups[-1]
            last_seq, last_tokens = parts[group[-1]]
            if (seq_id == last_seq + 1 and padded(n_tokens) == padded(last_tokens)
                    and padded(n_tokens) * (len(group) + 1) <= capacity):
                group.append(index)
                continue
        groups.append([index])
    return groups
