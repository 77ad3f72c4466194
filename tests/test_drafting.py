"""Drafts from a request's own tokens, and how their length adapts (no model needed)."""

from __future__ import annotations

from homeport.engine.drafting import (
    DRAFT_MAX,
    DRAFT_MIN,
    DRAFT_START,
    MISSES_BEFORE_PAUSE,
    PAUSE_START,
    DraftPolicy,
    NgramDrafter,
)


def test_the_tokens_after_the_last_earlier_occurrence_are_drafted() -> None:
    drafter = NgramDrafter([1, 2, 3, 4, 5, 6, 9, 9, 1, 2, 3, 7, 8])
    for token in (1, 2):
        drafter.append(token)
    assert drafter.draft(4) == []  # "8 1 2" never occurred before
    drafter.append(3)
    assert drafter.draft(4) == [7, 8, 1, 2]  # the latest "1 2 3" was followed by 7 8 ...
    assert drafter.draft(1) == [7]
    assert drafter.draft(0) == []


def test_the_longest_match_wins_over_a_later_shorter_one() -> None:
    copied = list(range(10, 18))  # eight tokens of the text being copied
    drafter = NgramDrafter([*copied, 100, 101, 55, 15, 16, 17, 200, 201, *copied])
    # The last three tokens occurred last before 200, but all eight only before 100.
    assert drafter.draft(2) == [100, 101]
    drafter.append(99)  # a token seen nowhere: no n-gram ending in it matches
    assert drafter.draft(2) == []


def test_a_sequence_is_never_its_own_match() -> None:
    drafter = NgramDrafter([5, 6, 7])
    assert drafter.draft(8) == []


def test_the_draft_grows_while_taken_and_shrinks_when_refused() -> None:
    policy = DraftPolicy()
    assert policy.allowed() == DRAFT_START
    policy.record(DRAFT_START, DRAFT_START)
    assert policy.allowed() == min(DRAFT_MAX, 2 * DRAFT_START)
    for _ in range(8):
        policy.record(policy.length, policy.length)
    assert policy.allowed() == DRAFT_MAX
    policy.record(DRAFT_MAX, 3)
    assert policy.allowed() == 4
    policy.record(4, 0)
    assert policy.allowed() == DRAFT_MIN


def test_drafting_pauses_after_drafts_refused_outright_and_resumes() -> None:
    policy = DraftPolicy()
    for _ in range(MISSES_BEFORE_PAUSE):
        policy.record(policy.allowed(), 0)
    assert [policy.allowed() for _ in range(PAUSE_START)] == [0] * PAUSE_START
    assert policy.allowed() == DRAFT_MIN
    for _ in range(MISSES_BEFORE_PAUSE):  # still refused: a longer pause
        policy.record(policy.allowed(), 0)
    assert [policy.allowed() for _ in range(2 * PAUSE_START)] == [0] * (2 * PAUSE_START)
    policy.record(policy.allowed(), 1)  # taken again: the pause starts over short
    assert policy.pause == PAUSE_START
