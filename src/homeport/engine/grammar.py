"""``format``'s grammar: GBNF for any JSON value or for a JSON Schema, bounded before llama.cpp.

llama-cpp-python's converter writes ``maxLength: n`` or a pattern's ``{0,n}`` as n nested groups,
and llama.cpp parses a grammar with one C++ stack frame per group: a schema with ``maxLength``
30000 overflowed the stack and took the whole server down. An enum of 100,000 values compiled
for over a minute and then made every sampling step of the model slow. So the schema is checked
first, keyword by keyword, for a message that names what to change, and the grammar it compiles
to is then checked as a whole (size and nesting), which bounds whatever the keyword checks miss.
llama.cpp's parser overflows an 8 MiB stack at 15,000 to 20,000 nested groups, and refuses more than
1,000 nested repetitions (after parsing them all). MAX_LENGTH is that refusal's bound, so a schema
either passes here and compiles, or is refused here by name; the grammar's own bounds stay far below
the crash, and everything sits far above what real schemas use (tools' schemas: tens of
properties, a few levels deep).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from homeport.errors import InvalidOptionError

MAX_SCHEMA_DEPTH = 64  # objects and arrays nested in the schema's JSON
MAX_LENGTH = 1000  # minLength, maxLength, and a pattern's {m,n}: maxLength n nests n deep
MAX_ITEMS = 256  # minItems, maxItems, minProperties, maxProperties
MAX_PROPERTIES = 256  # an object's properties (the converter's work grows with their square)
# An enum's values, or anyOf's or oneOf's schemas: each is a grammar stack at every sampling step,
# and compiling them takes time growing with their square (10,000 took 0.5 s, 100,000 a minute).
MAX_ALTERNATIVES = 256
MAX_GRAMMAR_BYTES = 256 * 1024
MAX_GRAMMAR_DEPTH = MAX_LENGTH + 64  # nested groups in one rule; maxLength n nests n deep

_LENGTH_KEYWORDS = ("minLength", "maxLength")
_ITEM_KEYWORDS = ("minItems", "maxItems", "minProperties", "maxProperties")
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")


def json_grammar(schema: dict[str, Any] | None) -> str:
    """GBNF for any JSON value (``format: "json"``) or for ``schema``; InvalidOptionError (a 400)
    for a schema that is too large or that the converter cannot express."""
    from llama_cpp import llama_grammar  # loads llama.cpp: only for a request to run a model

    if schema is None:
        return str(llama_grammar.JSON_GBNF)
    check_schema(schema)
    try:
        grammar = str(llama_grammar.json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:  # the converter raises assorted errors on schemas it cannot express
        raise InvalidOptionError(f"format: unsupported JSON schema ({exc})") from exc
    check_grammar(grammar)
    return grammar


def _too_large(what: str) -> InvalidOptionError:
    return InvalidOptionError(f"format: JSON schema too large: {what}")


def _nodes(schema: dict[str, Any]) -> Iterator[tuple[Any, int]]:
    """Every value in the schema's JSON with its depth, without recursion (a deep schema is what
    we are guarding against); stops with an error past MAX_SCHEMA_DEPTH."""
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise _too_large(f"it nests deeper than the limit of {MAX_SCHEMA_DEPTH}")
        yield node, depth
        if isinstance(node, dict):
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list):
            stack.extend((value, depth + 1) for value in node)


def _over(value: Any, limit: int) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > limit


def check_schema(schema: dict[str, Any]) -> None:
    """Raise InvalidOptionError naming the first keyword whose value is over its limit."""
    for node, _ in _nodes(schema):
        if not isinstance(node, dict):
            continue
        for keyword, limit in [(k, MAX_LENGTH) for k in _LENGTH_KEYWORDS] + \
                              [(k, MAX_ITEMS) for k in _ITEM_KEYWORDS]:
            if _over(node.get(keyword), limit):
                raise _too_large(f'"{keyword}" {node[keyword]} is over the limit of {limit}')
        for keyword in ("enum", "anyOf", "oneOf"):
            choices = node.get(keyword)
            if isinstance(choices, list) and len(choices) > MAX_ALTERNATIVES:
                raise _too_large(f'"{keyword}" has {len(choices)} values, over the limit of '
                                 f"{MAX_ALTERNATIVES}")
        properties = node.get("properties")
        if isinstance(properties, dict) and len(properties) > MAX_PROPERTIES:
            raise _too_large(f'"properties" has {len(properties)} entries, over the limit of '
                             f"{MAX_PROPERTIES}")
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            for match in _QUANTIFIER.finditer(pattern):
                for count in match.groups():
                    if count and int(count) > MAX_LENGTH:
                        raise _too_large(f'"pattern" repeats {count} times, over the limit of '
                                         f"{MAX_LENGTH}")


def grammar_depth(grammar: str) -> int:
    """The deepest nesting of groups ``( )`` in a GBNF text, outside literals, classes, comments."""
    depth = deepest = 0
    index, size = 0, len(grammar)
    while index < size:
        char = grammar[index]
        if char in "\"[":
            close = '"' if char == '"' else "]"
            index += 1
            while index < size and grammar[index] != close:
                index += 2 if grammar[index] == "\\" else 1
        elif char == "#":
            while index < size and grammar[index] != "\n":
                index += 1
        elif char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
        index += 1
    return deepest


def check_grammar(grammar: str) -> None:
    """Raise InvalidOptionError for a grammar too long or too deeply nested for llama.cpp."""
    size = len(grammar.encode())
    if size > MAX_GRAMMAR_BYTES:
        raise _too_large(f"its grammar is {size} bytes, over the limit of {MAX_GRAMMAR_BYTES}")
    depth = grammar_depth(grammar)
    if depth > MAX_GRAMMAR_DEPTH:
        raise _too_large(f"its grammar nests {depth} groups deep, over the limit of "
                         f"{MAX_GRAMMAR_DEPTH}")
