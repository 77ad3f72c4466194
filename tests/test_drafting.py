"""Drafts from a request's own tokens, how their length adapts, and what a position of a step is
found to cost (no model needed)."""

from __future__ import annotations

import pytest

from homeport.engine.drafting import (
    DRAFT_MAX,
    DRAFT_MIN,
    DRAFT_START,
    MISSES_BEFORE_PAUSE,
    PAUSE_START,
    PRIOR_CONFIRMED,
    PRIOR_TRIED,
    DraftPolicy,
    NgramDrafter,
)
from homeport.engine.step_cost import PRIOR_POSITION_SHARE, StepCost


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


def test_a_draft_is_no_longer_than_its_tokens_likely_enough_to_pay() -> None:
    policy = DraftPolicy()
    assert policy.acceptance == PRIOR_CONFIRMED / PRIOR_TRIED == 0.75
    # 0.75 and 0.5625 reach a break-even of 0.5; 0.42 does not.
    assert policy.allowed(0.5) == 2
    for _ in range(6):  # drafts taken whole: likely enough for the longest draft allowed
        policy.record(policy.length, policy.length)
    assert policy.acceptance > 0.97
    assert policy.allowed(0.5) == policy.length == DRAFT_MAX
    for _ in range(40):  # then mostly refused: the share falls, and the drafts shorten with it
        policy.record(4, 1)
    assert 0.5 < policy.acceptance < 0.6
    assert policy.allowed(0.25) == 2  # 0.54 and 0.29 reach 0.25
    assert policy.allowed(0.4) == 1
    assert policy.allowed(0.8) == 0  # not even one is worth it


def test_drafting_not_worth_a_position_pauses_and_looks_again_with_one_token() -> None:
    policy = DraftPolicy()
    assert policy.allowed(0.9) == 0  # 0.75 < 0.9: a pause starts
    assert [policy.allowed(0.9) for _ in range(PAUSE_START)] == [0] * PAUSE_START
    assert policy.allowed(0.9) == 1  # then one token, to look again
    assert policy.allowed(0.9) == 1  # (until a draft was made of it)
    # Each probe taken, but each still short of worth it: longer pauses between them, until the
    # share of confirmed tokens reaches 0.9 and drafting resumes.
    pauses, paused = [], 0
    for _ in range(1000):
        if policy.allowed(0.9) == 0:
            paused += 1
            continue
        if not policy.probe:
            break
        pauses.append(paused)
        paused = 0
        policy.record(1, 1)
    assert policy.acceptance >= 0.9
    assert pauses[0] == 0  # the first probe came right after the first pause
    assert len(pauses) > 2
    assert pauses[1:] == sorted(set(pauses[1:]))


def _steps(cost: StepCost, fixed: float, per_position: float, sizes: list[int]) -> None:
    for positions in sizes:
        cost.observe(positions, fixed + per_position * positions)


def test_a_positions_cost_is_fitted_from_steps_of_different_sizes() -> None:
    cost = StepCost()
    assert cost.position_share() == PRIOR_POSITION_SHARE  # nothing seen yet
    _steps(cost, 0.008, 0.0045, [1] * 40)
    assert cost.position_share() == PRIOR_POSITION_SHARE  # one size only: no slope to fit
    _steps(cost, 0.008, 0.0045, [1, 3, 1, 9, 2, 1, 5])
    assert cost.position_share() == pytest.approx(0.0045 / 0.008)
    # One stream: a drafted token must be confirmed at least 36% of the time to pay; beside three
    # other streams, whose tokens fill the step already, 69%.
    assert cost.break_even(1) == pytest.approx(0.36)
    assert cost.break_even(4) == pytest.approx(0.692, abs=0.001)
    # Where a position costs next to nothing (a GPU, a large model read from memory), almost any
    # draft pays; the latest steps count most.
    _steps(cost, 0.020, 0.0001, [1, 8, 1, 16, 1, 4] * 30)
    assert cost.break_even(4) < 0.03
    # Steps whose cost is all in their positions: no draft pays.
    linear = StepCost()
    _steps(linear, 0.0, 0.005, [1, 8, 1, 16, 1, 4])
    assert linear.break_even(1) == pytest.approx(1.0)
