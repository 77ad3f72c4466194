"""Applying a model's SEARCH/REPLACE blocks to text, robustly.

    <<<<<<< SEARCH
    lines copied from the text
    =======
    the lines to put there instead
    >>>>>>> REPLACE

Each block's SEARCH lines are looked for in turn: exactly; then ignoring whitespace (the
replacement is re-indented to where the lines really are); then as the one clearly most similar
run of lines. Anything else fails with an ``EditError`` that shows the closest lines, and nothing
is changed: edits apply all together or not at all.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from homeport.errors import HomeportError

FUZZY_THRESHOLD = 0.8  # how alike (0..1) the closest lines must be to count as a match
FUZZY_MARGIN = 0.1  # ... and how much more alike than any other place

_SEARCH = re.compile(r"^\s*<{5,9} ?SEARCH\s*$")
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9} ?REPLACE\s*$")


class EditError(HomeportError):
    pass


@dataclass(frozen=True)
class Block:
    search: list[str]
    replace: list[str]


@dataclass(frozen=True)
class Applied:
    """Where a block matched: ``how`` is "exact", "whitespace" or "fuzzy 87%"."""

    start: int  # 0-based first line in the text as it was when the block applied
    how: str


def parse_blocks(reply: str) -> list[Block]:
    """The SEARCH/REPLACE blocks in a reply (fences and prose around them are ignored)."""
    blocks: list[Block] = []
    search: list[str] | None = None
    replace: list[str] | None = None
    for line in reply.splitlines():
        if search is None:
            if _SEARCH.match(line):
                search = []
        elif replace is None:
            if _DIVIDER.match(line):
                replace = []
            else:
                search.append(line)
        elif _REPLACE.match(line):
            blocks.append(Block(search, replace))
            search = replace = None
        else:
            replace.append(line)
    if search is not None:
        raise EditError("the model's reply ends inside a SEARCH/REPLACE block (it was cut "
                        "short?); nothing was changed")
    return blocks


def apply_blocks(text: str, blocks: list[Block]) -> tuple[str, list[Applied]]:
    """The text with every block applied, and how each matched; EditError if one does not."""
    lines = text.splitlines()
    applied: list[Applied] = []
    for number, block in enumerate(blocks, start=1):
        if not any(line.strip() for line in block.search):
            # An empty SEARCH means "add this": at the end, as the conventions of the format say.
            lines += block.replace
            applied.append(Applied(len(lines) - len(block.replace), "append"))
            continue
        start, length, how = _locate(lines, block.search, number, len(blocks))
        found = lines[start:start + length]
        lines[start:start + length] = (
            block.replace if how == "exact" else reindent(block.replace, block.search, found))
        applied.append(Applied(start, how))
    result = "\n".join(lines)
    return (result + "\n" if text.endswith("\n") and lines else result), applied


def _locate(lines: list[str], search: list[str], number: int, total: int
            ) -> tuple[int, int, str]:
    """(first line, number of lines, how) of the one place ``search`` stands for."""
    size = len(search)
    squashed, wanted = _squash(lines), _squash(search)
    for how, text, target in (("exact", lines, search), ("whitespace", squashed, wanted)):
        found = [i for i in range(len(lines) - size + 1) if text[i:i + size] == target]
        if len(found) == 1:
            return found[0], size, how
        if len(found) > 1:
            places = ", ".join(str(i + 1) for i in found[:5])
            raise EditError(f"{_which(number, total)} matches {len(found)} places (lines "
                            f"{places}); nothing was changed: ask again with a smaller region")
    # A model may drop or add a line of what it copies: try runs one line shorter and longer.
    matcher = difflib.SequenceMatcher(None, "", "\n".join(wanted), autojunk=False)
    scores = sorted(((_likeness(matcher, squashed[i:i + length]), i, length)
                     for length in {max(1, size - 1), size, size + 1}
                     for i in range(len(lines) - length + 1)), reverse=True)
    if scores:
        best, at, length = scores[0]
        others = [score for score, i, _ in scores[1:] if abs(i - at) >= size]
        if best >= FUZZY_THRESHOLD and (not others or best - others[0] >= FUZZY_MARGIN):
            return at, length, f"fuzzy {best:.0%}"
    raise EditError(_no_match(lines, search, scores, number, total))


def _which(number: int, total: int) -> str:
    return "the edit" if total == 1 else f"edit {number} of {total}"


def _no_match(lines: list[str], search: list[str], scores: list[tuple[float, int, int]],
              number: int, total: int) -> str:
    message = [f"could not find the lines {_which(number, total)} replaces; nothing was changed."]
    wanted = [f"    | {line}" for line in search[:8]]
    message += ["The model looked for:", *wanted]
    if scores:
        best, at, length = scores[0]
        closest = lines[at:at + length][:8]
        message.append(f"The closest lines ({best:.0%} alike):")
        message += [f"{at + 1 + offset:5} | {line}" for offset, line in enumerate(closest)]
    return "\n".join(message)


def _squash(lines: list[str]) -> list[str]:
    return [" ".join(line.split()) for line in lines]


def _likeness(matcher: difflib.SequenceMatcher[str], squashed: list[str]) -> float:
    """How alike (0..1) ``squashed`` lines are to the squashed search lines in ``matcher``, which
    keeps what it learnt of them between calls."""
    matcher.set_seq1("\n".join(squashed))
    if matcher.real_quick_ratio() < FUZZY_THRESHOLD / 2:
        return matcher.real_quick_ratio() / 2  # cheap and far below anything that counts
    return matcher.ratio()


def _indent(line: str) -> str:
    return line[:len(line) - len(line.lstrip())]


def reindent(replacement: list[str], search: list[str], found: list[str]) -> list[str]:
    """``replacement`` moved from the search lines' indentation to that of the lines found.

    Each indentation the model used maps to the one the file has at the same line; deeper ones
    keep their extra depth, scaled when the model indents by another unit (2 spaces for 4).
    """
    mapping: dict[str, str] = {}
    for s, f in zip(search, found, strict=False):
        if s.strip() and f.strip():
            mapping.setdefault(_indent(s), _indent(f))
    if all(key == value for key, value in mapping.items()):
        return replacement
    keys = sorted(mapping, key=len)
    scale = 1.0
    if len(keys) > 1 and len(keys[-1]) > len(keys[0]):
        scale = max(0.25, (len(mapping[keys[-1]]) - len(mapping[keys[0]]))
                    / (len(keys[-1]) - len(keys[0])))
    result = []
    for line in replacement:
        indent = _indent(line)
        if not line.strip():
            result.append("")
            continue
        base = next((key for key in reversed(keys) if indent.startswith(key)), None)
        if base is None:  # shallower than anything the model copied
            base = keys[0]
            cut = round((len(base) - len(indent)) * scale)
            new = mapping[base][:max(0, len(mapping[base]) - cut)]
        else:
            extra = indent[len(base):]
            new = mapping[base] + (" " * round(len(extra) * scale) if extra.strip(" ") == ""
                                   else extra)
        result.append(new + line.lstrip())
    return result
