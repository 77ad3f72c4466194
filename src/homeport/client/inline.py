"""The inline strategy: rewrite a region of a text by an instruction, through any adapter.

The model sees the region with context around it. A small region comes back whole (in a code
block); a larger one as SEARCH/REPLACE blocks applied by ``homeport.client.edits``. Only the region
changes; line endings and the final newline stay as they were.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from homeport.client.adapters import Adapter, Message
from homeport.client.chat import fenced, language
from homeport.client.edits import EditError, apply_blocks, parse_blocks

WHOLE_REGION_LINES = 40  # up to this many lines, ask for the region whole
CONTEXT_LINES = 40  # lines of context shown on each side

RULES = """You are a careful programmer editing part of a file. You get the region to edit, some \
context around it (which must not change) and an instruction. Change only what the instruction \
asks for, keep the style and indentation of the file, and write no explanations."""

WHOLE = RULES + """

Answer with the complete new text of the region in one fenced code block, and nothing else."""

BLOCKS = RULES + """

Answer only with SEARCH/REPLACE blocks, one per change:

<<<<<<< SEARCH
lines copied exactly from the region, indentation included
=======
the lines to put there instead
>>>>>>> REPLACE

Copy enough SEARCH lines to make each block unique. To delete lines, leave the part after \
======= empty."""

_FENCE = re.compile(r"^(`{3,}|~{3,})[^\n]*\n(.*?)^\1[ \t]*$", re.DOTALL | re.MULTILINE)


@dataclass
class Outcome:
    text: str
    notes: list[str] = field(default_factory=list)


def request(lines: list[str], start: int, end: int, instruction: str, name: str
            ) -> tuple[str, list[Message], bool]:
    """(system prompt, messages, whole) for the region ``lines[start:end]``."""
    whole = end - start <= WHOLE_REGION_LINES
    info = language(name)
    before = lines[max(0, start - CONTEXT_LINES):start]
    after = lines[end:end + CONTEXT_LINES]
    parts = [f"File: {name}"]
    if before:
        parts.append("Context before the region (do not change):\n"
                     + fenced("\n".join(before), info))
    parts.append(f"The region to edit (lines {start + 1}-{end}):\n"
                 + fenced("\n".join(lines[start:end]), info))
    if after:
        parts.append("Context after the region (do not change):\n"
                     + fenced("\n".join(after), info))
    parts.append(f"Instruction: {instruction}")
    return (WHOLE if whole else BLOCKS), [Message("user", "\n\n".join(parts))], whole


def new_region(region: list[str], reply: str, whole: bool) -> Outcome:
    """The region's new lines from the model's reply (blocks, or the whole region)."""
    blocks = parse_blocks(reply)
    if blocks:
        text, applied = apply_blocks("\n".join(region), blocks)
        notes = [f"edit {number} matched {how.how} at line {how.start + 1} of the region"
                 for number, how in enumerate(applied, start=1) if how.how != "exact"]
        return Outcome(text, notes)
    if whole:
        # Prose is never taken for code: only a fenced block counts. When the model echoed the
        # context too, the block most like the region is the region.
        current = "\n".join(region)
        bodies = [match.group(2).rstrip("\n") for match in _FENCE.finditer(reply)]
        if any(body.strip() for body in bodies):
            return Outcome(max(bodies, key=lambda body: difflib.SequenceMatcher(
                None, body, current, autojunk=False).ratio()))
    opening = " / ".join(line.strip() for line in reply.strip().splitlines()[:2])[:120]
    raise EditError("the model's reply holds no edit (expected "
                    f"{'a code block' if whole else 'SEARCH/REPLACE blocks'}); nothing was "
                    f"changed. It began: {opening or '(empty)'}")


def edit_text(adapter: Adapter, text: str, start: int, end: int, instruction: str,
              name: str) -> Outcome:
    """``text`` with lines ``[start, end)`` rewritten by the model as ``instruction`` asks."""
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = text.splitlines()
    system, messages, whole = request(lines, start, end, instruction, name)
    # A rambling model must not run to the end of its context: allow twice the region, and room.
    region_chars = sum(len(line) + 1 for line in lines[start:end])
    reply = adapter.complete(messages, system, max_tokens=2 * region_chars // 3 + 256)
    outcome = new_region(lines[start:end], reply.text, whole)
    replaced = lines[:start] + (outcome.text.split("\n") if outcome.text else []) + lines[end:]
    final = newline if text.endswith(("\n", "\r")) and replaced else ""
    return Outcome(newline.join(replaced) + final, outcome.notes)
