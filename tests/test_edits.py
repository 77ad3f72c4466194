"""Applying SEARCH/REPLACE blocks: exact, re-indented, fuzzy, and the failures."""

from __future__ import annotations

import pytest

from homeport.client.edits import EditError, apply_blocks, parse_blocks
from homeport.client.inline import new_region

SOURCE = """\
class Circle:
    def __init__(self, r):
        self.r = r

    def area(self):
        return 3.14 * self.r * self.r

    def perimeter(self):
        return 2 * 3.14 * self.r
"""


def block(search: str, replace: str) -> str:
    return f"<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"


def test_exact() -> None:
    reply = "Sure:\n```python\n" + block("        return 3.14 * self.r * self.r",
                                         "        return math.pi * self.r ** 2") + "```\n"
    result, applied = apply_blocks(SOURCE, parse_blocks(reply))
    assert "        return math.pi * self.r ** 2\n" in result
    assert "3.14 * self.r * self.r" not in result
    assert applied[0].how == "exact"
    assert result.endswith("\n")


def test_reindented_search_is_found_and_the_replacement_follows_the_file() -> None:
    # The model dropped the class indentation and indents by 2, the file by 4.
    reply = block("def perimeter(self):\n  return 2 * 3.14 * self.r",
                  "def perimeter(self):\n  if self.r < 0:\n    raise ValueError(self.r)\n"
                  "  return 2 * math.pi * self.r")
    result, applied = apply_blocks(SOURCE, parse_blocks(reply))
    assert applied[0].how == "whitespace"
    assert result.endswith("    def perimeter(self):\n        if self.r < 0:\n"
                           "            raise ValueError(self.r)\n"
                           "        return 2 * math.pi * self.r\n")


def test_fuzzy_match_when_the_copy_is_slightly_wrong() -> None:
    reply = block("    def area(self):\n        return 3.1416 * self.r * self.r",
                  "    def area(self):\n        return math.pi * self.r ** 2")
    result, applied = apply_blocks(SOURCE, parse_blocks(reply))
    assert applied[0].how.startswith("fuzzy ")
    assert "return math.pi * self.r ** 2" in result
    assert "3.14 *" in result, "the perimeter was left alone"


def test_no_match_shows_the_closest_lines_and_changes_nothing() -> None:
    reply = block("    def volume(self, h):\n        return self.area() * h",
                  "    def volume(self, h):\n        return h")
    with pytest.raises(EditError) as info:
        apply_blocks(SOURCE, parse_blocks(reply))
    message = str(info.value)
    assert message.startswith("could not find the lines the edit replaces; nothing was changed.")
    assert "    | " in message
    assert "The closest lines (" in message
    assert "    5 |     def area(self):" in message or "    8 |     def perimeter" in message


def test_ambiguous_match_is_refused() -> None:
    text = "x = 1\nprint(x)\nx = 1\n"
    with pytest.raises(EditError, match=r"matches 2 places \(lines 1, 3\)"):
        apply_blocks(text, parse_blocks(block("x = 1", "x = 2")))


def test_all_or_nothing_with_several_blocks() -> None:
    reply = block("class Circle:", "class Round:") + block("    def nope(self):", "")
    with pytest.raises(EditError, match="edit 2 of 2"):
        apply_blocks(SOURCE, parse_blocks(reply))


def test_deletion_and_append() -> None:
    reply = block("    def area(self):\n        return 3.14 * self.r * self.r\n", "") + \
        block("", "\n    def diameter(self):\n        return 2 * self.r")
    result, _ = apply_blocks(SOURCE, parse_blocks(reply))
    assert "def area" not in result
    assert result.endswith("    def diameter(self):\n        return 2 * self.r\n")


def test_a_cut_short_reply_is_an_error() -> None:
    with pytest.raises(EditError, match="ends inside a SEARCH/REPLACE block"):
        parse_blocks("<<<<<<< SEARCH\nx = 1\n=======\nx = ")


def test_whole_region_from_a_code_block() -> None:
    outcome = new_region(["x = 1", "y = 2"], "Here it is:\n```python\nz = 1\ny = 2\n```\nDone.",
                         whole=True)
    assert outcome.text == "z = 1\ny = 2"


def test_a_reply_without_an_edit_is_an_error() -> None:
    with pytest.raises(EditError, match=r"holds no edit .* It began: I cannot do that"):
        new_region(["x = 1"], "I cannot do that.", whole=False)


def test_whole_region_prose_is_not_code_and_the_region_like_block_wins() -> None:
    with pytest.raises(EditError, match="expected a code block"):
        new_region(["x = 1"], "Sure! x should be 2.", whole=True)
    reply = ("Context:\n```python\nimport os\nimport sys\n```\nThe region:\n"
             "```python\ntotal = a + b\nreturn total\n```")
    assert new_region(["total = a+b", "return total"], reply, whole=True).text == (
        "total = a + b\nreturn total")
