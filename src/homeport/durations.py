"""Go-style durations ("5m", "1h30m", "-1s"), as Ollama accepts them for keep_alive."""

from __future__ import annotations

import math
import re

_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")

FOREVER = math.inf
# Go's time.Duration is an int64 of nanoseconds: about 292 years either way.
MAX_DURATION_SECONDS = (2**63 - 1) / 1e9


def seconds_from_number(value: float) -> float:
    """A number of seconds, as given; ValueError when it is NaN, infinite or past what a Go
    duration holds (a 400-digit integer included, which float() alone would not convert)."""
    if isinstance(value, int) and abs(value) > MAX_DURATION_SECONDS:
        raise ValueError(f"{str(value)[:20]}... seconds is out of range")
    seconds = float(value)
    if not math.isfinite(seconds) or abs(seconds) > MAX_DURATION_SECONDS:
        raise ValueError(f"{value} seconds is out of range")
    return seconds


def parse_go_duration(text: str) -> float:
    """Parse a Go duration string into seconds; raise ValueError with Go's wording on failure."""
    original = text
    sign = 1.0
    if text and text[0] in "+-":
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise ValueError(f'time: invalid duration "{original}"')
    total = 0.0
    pos = 0
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None:
            if re.fullmatch(r"[\d.]+", text[pos:]):
                raise ValueError(f'time: missing unit in duration "{original}"')
            raise ValueError(f'time: invalid duration "{original}"')
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
        if total > MAX_DURATION_SECONDS:  # Go refuses to overflow the int64 as well
            raise ValueError(f'time: invalid duration "{original}"')
    return sign * total


def normalize_keep_alive(seconds: float) -> float:
    """Negative means forever (math.inf); zero means unload as soon as possible."""
    return FOREVER if seconds < 0 else seconds


_DAYS = re.compile(r"(\d+)\s*([dw])")


def parse_span(text: str) -> float:
    """A span of time people type for expiries and reports: "30d", "2w", "12h", "90m", "1h30m"."""
    stripped = text.strip().lower()
    match = _DAYS.fullmatch(stripped)
    if match is not None:
        days = int(match.group(1)) * (7 if match.group(2) == "w" else 1)
        return days * 86400.0
    hint = f'"{text}" is not a span of time such as 30d, 2w, 12h or 90m'
    try:
        seconds = parse_go_duration(stripped)
    except ValueError:
        raise ValueError(hint) from None
    if seconds <= 0:
        raise ValueError(hint)
    return seconds
