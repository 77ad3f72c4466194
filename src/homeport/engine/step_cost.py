"""What one more position costs a decode step, learned from the steps a runner takes.

A drafted token pays only where verifying it costs less than the tokens it brings. On a GPU, or a
CPU reading a large model's weights from memory, a step of ten positions takes barely longer than
a step of one, and any likely draft pays. On a small model on a few CPU cores a step is compute
bound: each position adds about half of a one-token step (SmolLM2 on this 2-core machine: a step
takes ~8 ms plus ~4.5 ms a position), so a draft the model confirms half of the time loses time,
and beside other streams, whose tokens already fill the step, it loses more. The runner times its
decode steps (those whose every position has logits, as drafts' have) and fits
``seconds = fixed + per_position * positions`` over the latest of them; a drafted token is worth its
position when the chance that it is confirmed is at least ``break_even``.
"""

from __future__ import annotations

from dataclasses import dataclass

DECAY = 0.97  # each step's weight in the fit, per later step: about the last 30 steps count
# Until the steps seen differ enough in size to fit a slope, a position is taken to cost this
# share of a step's fixed part: lower than on a compute-bound CPU, so that drafts are tried and
# the steps they make show what a position costs here.
PRIOR_POSITION_SHARE = 0.25
MIN_SPREAD = 0.25  # the weighted variance of the positions (squared) that a slope needs


@dataclass
class StepCost:
    """Decayed sums of the observed (positions, seconds) pairs, for a least-squares line."""

    weight: float = 0.0
    positions: float = 0.0
    seconds: float = 0.0
    positions_squared: float = 0.0
    positions_seconds: float = 0.0

    def observe(self, positions: int, seconds: float) -> None:
        """One decode step of ``positions`` positions, each with logits, took ``seconds``."""
        self.weight = self.weight * DECAY + 1
        self.positions = self.positions * DECAY + positions
        self.seconds = self.seconds * DECAY + seconds
        self.positions_squared = self.positions_squared * DECAY + positions * positions
        self.positions_seconds = self.positions_seconds * DECAY + positions * seconds

    def position_share(self) -> float:
        """One more position's cost as a share of a step's fixed cost (the fit's slope over its
        intercept; ``PRIOR_POSITION_SHARE`` until there is a slope to fit)."""
        if self.weight <= 0:
            return PRIOR_POSITION_SHARE
        mean_positions = self.positions / self.weight
        mean_seconds = self.seconds / self.weight
        spread = self.positions_squared / self.weight - mean_positions ** 2
        if spread < MIN_SPREAD:
            return PRIOR_POSITION_SHARE
        per_position = max(0.0, (self.positions_seconds / self.weight
                                 - mean_positions * mean_seconds) / spread)
        fixed = mean_seconds - per_position * mean_positions
        if fixed <= 0:  # all cost grows with the positions: a position costs what it brings
            return float("inf")
        return per_position / fixed

    def break_even(self, base: int) -> float:
        """The chance of being confirmed a drafted token needs to be worth its position in a step
        of ``base`` positions: below it, the step brings fewer tokens a second than without it
        (one more position adds ``share`` to a step costing ``1 + share * base``, which brings
        ``base`` tokens)."""
        share = self.position_share()
        if share == float("inf"):
            return 1.0
        return share * base / (1 + share * base)
