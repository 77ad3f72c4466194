"""Two sides of one comparison (direct and through a gateway, in-process and behind a runner).

Each side streams at a few concurrency levels; this module keeps one level's figures the same way
for every such bench, and prints the table that sets the two sides next to each other: the first
side's value, the second's, and the second's ratio to (or time added over) the first.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.results import percentile


def level_figures(tps: dict[int, list[float]], ttft_s: dict[int, list[float]]) -> dict[str, Any]:
    """One side's figures at each concurrency level, keyed ``<level>_streams`` as results keep them."""
    return {
        f"{level}_streams": {
            "tokens_per_s_median": statistics.median(tps[level]),
            "tokens_per_s": tps[level],
            "ttft_p50_s": percentile(ttft_s[level], 50),
            "ttft_p95_s": percentile(ttft_s[level], 95),
            "ttft_s": ttft_s[level],
        }
        for level in tps
    }


@dataclass(frozen=True)
class SideBySide:
    """The widths of a two-sided table; the last column is as wide as its heading, plus one."""

    label: int  # width of the row labels
    column: int  # width of each side's column
    last: str  # heading of the last column, e.g. "gateway/direct"

    def header(self, base: str, other: str) -> None:
        print(f"{'':{self.label}} {base:>{self.column}} {other:>{self.column}}"
              f" {self.last:>{len(self.last) + 1}}")

    def ratio_row(self, label: str, base: float, other: float, digits: int, ratio_digits: int,
                  note: str = "") -> None:
        """Both values and ``other / base``."""
        print(f"{label:{self.label}} {base:{self.column}.{digits}f} {other:{self.column}.{digits}f}"
              f" {other / base:{len(self.last)}.{ratio_digits}f}x{note}")

    def added_ms_row(self, label: str, base_s: float, other_s: float, digits: int,
                     note: str = "") -> None:
        """Both times and what the second adds, all in milliseconds."""
        added = other_s - base_s
        print(f"{label:{self.label}} {1000 * base_s:{self.column}.{digits}f}"
              f" {1000 * other_s:{self.column}.{digits}f}"
              f" {1000 * added:+{len(self.last) - 3}.{digits}f} ms{note}")

    def level_rows(self, base: dict[str, Any], other: dict[str, Any], levels: tuple[int, ...],
                   ttft_goal_ms: int) -> None:
        """Tokens/s and TTFT at each level, from two sides' ``level_figures``."""
        for level in levels:
            key = f"{level}_streams"
            b, o = base[key], other[key]
            self.ratio_row(f"{level} stream(s) tokens/s", b["tokens_per_s_median"],
                           o["tokens_per_s_median"], 1, 3, "  (goal >= 0.98x)")
            for q in (50, 95):
                goal = f"  (goal < {ttft_goal_ms} ms added)" if q == 50 else ""
                self.added_ms_row(f"  TTFT p{q} (ms)", b[f"ttft_p{q}_s"], o[f"ttft_p{q}_s"], 1, goal)
