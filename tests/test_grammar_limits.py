"""The bounds on ``format`` schemas and stop strings, and the stop finder, as plain functions."""

from __future__ import annotations

import pytest

from homeport.engine import grammar
from homeport.engine.grammar import grammar_depth, json_grammar
from homeport.engine.stops import MAX_STOP_LENGTH, MAX_STOPS, StopFinder, check_stops
from homeport.errors import InvalidOptionError


def _nested_objects(depth: int) -> dict[str, object]:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


@pytest.mark.parametrize(("schema", "message"), [
    ({"type": "string", "maxLength": 30000}, '"maxLength" 30000 is over the limit of 1000'),
    ({"type": "string", "minLength": 5000}, '"minLength" 5000 is over the limit of 1000'),
    ({"type": "array", "items": {"type": "integer"}, "maxItems": 1000},
     '"maxItems" 1000 is over the limit of 256'),
    ({"type": "string", "pattern": "^a{0,100000}$"},
     '"pattern" repeats 100000 times, over the limit of 1000'),
    ({"type": "string", "pattern": "^(ab){5000}$"},
     '"pattern" repeats 5000 times, over the limit of 1000'),
    ({"enum": list(range(100_000))}, '"enum" has 100000 values, over the limit of 256'),
    ({"anyOf": [{"const": i} for i in range(2000)]},
     '"anyOf" has 2000 values, over the limit of 256'),
    ({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(300)}},
     '"properties" has 300 entries, over the limit of 256'),
    (_nested_objects(200), "it nests deeper than the limit of 64"),
])
def test_schemas_over_a_limit_are_refused_by_name(schema: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidOptionError) as raised:
        json_grammar(schema)
    assert raised.value.message == f"format: JSON schema too large: {message}"


def test_a_property_named_like_a_keyword_is_not_a_keyword() -> None:
    schema = {"type": "object", "properties": {"maxLength": {"type": "integer"},
                                               "enum": {"type": "string"}}}
    assert "root ::=" in json_grammar(schema)


def test_schemas_at_the_limits_compile_within_the_grammar_bounds() -> None:
    at_limits = {
        "type": "object",
        "properties": {
            "text": {"type": "string", "maxLength": grammar.MAX_LENGTH},
            "code": {"type": "string", "pattern": f"^[a-z]{{0,{grammar.MAX_LENGTH}}}$"},
            "list": {"type": "array", "items": {"type": "integer"}, "maxItems": grammar.MAX_ITEMS},
            "pick": {"enum": [f"value {i}" for i in range(grammar.MAX_ALTERNATIVES)]},
        },
    }
    text = json_grammar(at_limits)
    assert grammar.MAX_LENGTH <= grammar_depth(text) <= grammar.MAX_GRAMMAR_DEPTH
    assert len(text.encode()) <= grammar.MAX_GRAMMAR_BYTES


def test_grammar_depth_skips_literals_classes_and_comments() -> None:
    assert grammar_depth('root ::= ("(" [(] "\\")(" # ((((\n x)') == 1
    assert grammar_depth("root ::= (a (b (c)?)?)? (d)") == 3


def test_a_grammar_nested_too_deep_is_refused() -> None:
    depth = grammar.MAX_GRAMMAR_DEPTH + 1
    with pytest.raises(InvalidOptionError, match=f"nests {depth} groups deep"):
        grammar.check_grammar("root ::= " + "(" * depth + '"a"' + ")" * depth)


def test_stop_bounds() -> None:
    check_stops(["x"] * MAX_STOPS)
    with pytest.raises(InvalidOptionError, match=f"has {MAX_STOPS + 1} strings"):
        check_stops(["x"] * (MAX_STOPS + 1))
    with pytest.raises(InvalidOptionError, match=f"of {MAX_STOP_LENGTH + 1} characters"):
        check_stops(["x" * (MAX_STOP_LENGTH + 1)])


def _run(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    finder = StopFinder(stops)
    sent = []
    for piece in pieces:
        ready, stopped = finder.feed(piece)
        sent.append(ready)
        if stopped:
            return "".join(sent), True
    return "".join(sent) + finder.flush(), False


def test_a_stop_split_across_pieces_is_found() -> None:
    assert _run(["</end>"], ["hello </", "en", "d> more"]) == ("hello ", True)


def test_the_earliest_stop_wins_whatever_the_list_order() -> None:
    assert _run(["world", "lo"], ["hello world"]) == ("hel", True)


def test_a_partial_stop_is_held_and_then_released() -> None:
    finder = StopFinder(["abc"])
    assert finder.feed("xxab") == ("xx", False)
    assert finder.feed("d") == ("abd", False)
    assert finder.flush() == ""


def test_without_a_stop_everything_comes_out() -> None:
    text = "a b ab abab ba"
    assert _run(["abc", "bb"], list(text)) == (text, False)
    assert _run([], [text]) == (text, False)
