"""Reading a Modelfile, Ollama's recipe for a model, into the fields of a create request.

Instructions (case-insensitive), one per line: ``FROM`` (a model name or a path to a GGUF file),
``PARAMETER name value``, ``TEMPLATE``, ``SYSTEM``, ``LICENSE``, ``MESSAGE role content``,
``ADAPTER``, ``DRAFT`` (a path to a draft model's GGUF file, for speculative decoding; one at most,
as homeport takes no split GGUF files); ``#`` starts a comment line. A value runs to the end of the
line, or is quoted with ``"…"`` or, across lines, ``\"\"\"…\"\"\"``. ``REQUIRES``, ``RENDERER`` and
``PARSER`` (Ollama's own) are read and ignored. Errors name the line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from homeport.errors import BadRequestError

_IGNORED = {"requires", "renderer", "parser"}
_KNOWN = {"from", "parameter", "template", "system", "license", "message", "adapter",
          "draft"} | _IGNORED
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
MESSAGE_ROLES = ("system", "user", "assistant")


@dataclass
class Modelfile:
    from_: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    license: list[str] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)
    draft: str | None = None

    def add_parameter(self, name: str, raw: str) -> None:
        """One PARAMETER: every ``stop`` is kept, in a list; any other name's last value wins."""
        if name == "stop":
            self.parameters.setdefault("stop", []).append(raw)
        else:
            self.parameters[name] = parameter_value(raw)


class ModelfileError(BadRequestError):
    pass


def parameter_value(raw: str) -> Any:
    """A PARAMETER's value typed as the API wants it: numbers and booleans, else text. ValueError
    for a number that is not finite (NaN, inf, 1e400), which no option can take."""
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        number = float(raw)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise ValueError(f"{raw!r} is not a finite number")
        return number
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    return raw


class _Cursor:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    @property
    def line(self) -> int:
        return self.text.count("\n", 0, self.pos) + 1

    def fail(self, message: str) -> ModelfileError:
        return ModelfileError(f"Modelfile line {self.line}: {message}")

    def skip_blank(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def rest_of_line(self) -> str:
        end = self.text.find("\n", self.pos)
        end = len(self.text) if end < 0 else end
        value, self.pos = self.text[self.pos:end], end
        return value.strip()

    def word(self, what: str) -> str:
        match = _WORD.match(self.text, self.pos)
        if match is None:
            raise self.fail(f"expected {what}")
        self.pos = match.end()
        return match.group()

    def value(self) -> str:
        if self.text.startswith('"""', self.pos):
            end = self.text.find('"""', self.pos + 3)
            if end < 0:
                raise self.fail('unterminated """')
            value, self.pos = self.text[self.pos + 3:end], end + 3
            return value
        if self.text.startswith('"', self.pos):
            return self._quoted()
        return self.rest_of_line()

    def _quoted(self) -> str:
        chars: list[str] = []
        pos = self.pos + 1
        while pos < len(self.text) and self.text[pos] != "\n":
            char = self.text[pos]
            if char == "\\" and pos + 1 < len(self.text):
                chars.append(self.text[pos + 1])
                pos += 2
                continue
            if char == '"':
                self.pos = pos + 1
                return "".join(chars)
            chars.append(char)
            pos += 1
        raise self.fail('unterminated "')


def parse_modelfile(text: str) -> Modelfile:
    """Parse a Modelfile; raises ModelfileError (naming the line) on anything it cannot read."""
    result = Modelfile()
    cursor = _Cursor(text)
    while True:
        cursor.skip_blank()
        if cursor.pos >= len(text):
            break
        if text[cursor.pos] == "#":
            cursor.rest_of_line()
            continue
        command = cursor.word("an instruction").lower()
        if command not in _KNOWN:
            raise cursor.fail(f"unknown instruction {command.upper()!r}")
        cursor.skip_spaces()
        if command == "parameter":
            name = cursor.word("a parameter name")
            cursor.skip_spaces()
            try:
                result.add_parameter(name, cursor.value())
            except ValueError as exc:
                raise cursor.fail(f"parameter {name}: {exc}") from None
        elif command == "message":
            role = cursor.word("a message role").lower()
            if role not in MESSAGE_ROLES:
                raise cursor.fail(f"message role must be one of {', '.join(MESSAGE_ROLES)}")
            cursor.skip_spaces()
            result.messages.append({"role": role, "content": cursor.value()})
        else:
            value = cursor.value()
            if command == "from":
                if result.from_:
                    raise cursor.fail("more than one FROM")
                result.from_ = value
            elif command == "template":
                result.template = value
            elif command == "system":
                result.system = value
            elif command == "license":
                result.license.append(value)
            elif command == "adapter":
                result.adapters.append(value)
            elif command == "draft":
                if result.draft is not None:
                    raise cursor.fail("more than one DRAFT")
                if not value:
                    raise cursor.fail("DRAFT needs a path to a GGUF file")
                result.draft = value
    if not result.from_:
        raise ModelfileError("the Modelfile has no FROM line")
    return result
