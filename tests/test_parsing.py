"""The output parser alone: thinking and tool calls split out of a token stream, chunk by chunk."""

from __future__ import annotations

import pytest

from homeport.engine.parsing import OutputParser


def run(parser: OutputParser, chunks: list[str]) -> tuple[str, str]:
    deltas = [d for chunk in chunks for d in parser.feed(chunk)] + parser.finish()
    return "".join(d.content for d in deltas), "".join(d.thinking for d in deltas)


@pytest.mark.parametrize("split", [1, 2, 3, 7, 100])
def test_think_block_split_anywhere(split: int) -> None:
    text = "<think>\nweighing it up</think>\n\nThe answer is 4."
    chunks = [text[i:i + split] for i in range(0, len(text), split)]
    content, thinking = run(OutputParser(thinking=True, in_thinking=False, tool_names=None), chunks)
    assert thinking == "weighing it up"
    assert content == "The answer is 4."


def test_prompt_opened_the_think_block() -> None:
    content, thinking = run(OutputParser(thinking=True, in_thinking=True, tool_names=None),
                            ["hmm, ", "let me see</th", "ink>Yes."])
    assert (content, thinking) == ("Yes.", "hmm, let me see")


def test_no_thinking_model_keeps_angle_brackets() -> None:
    content, thinking = run(OutputParser(thinking=False, in_thinking=False, tool_names=None),
                            ["<think>not special</think>"])
    assert content == "<think>not special</think>"
    assert thinking == ""


@pytest.mark.parametrize("chunks", [
    ['<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>'],
    ["<tool", '_call>{"name": "f", ', '"arguments": {"x": 1}}</tool_', "call>"],
    ['{"name": "f", "arguments": {"x": 1}}'],
    ['[TOOL_CALLS] [{"name": "f", "arguments": {"x": 1}}]'],
    ['{"name": "f", "parameters": {"x": 1}}'],
    ['{"function": {"name": "f", "arguments": "{\\"x\\": 1}"}}'],
])
def test_tool_call_forms(chunks: list[str]) -> None:
    parser = OutputParser(thinking=False, in_thinking=False, tool_names={"f"})
    content, _ = run(parser, chunks)
    assert content.strip() == ""
    assert [(c.name, c.arguments) for c in parser.tool_calls] == [("f", {"x": 1})]


def test_text_then_a_tool_call() -> None:
    parser = OutputParser(thinking=False, in_thinking=False, tool_names={"f"})
    content, _ = run(parser, ["Let me check. ", '<tool_call>{"name": "f", "arguments": {}}',
                              "</tool_call>"])
    assert content == "Let me check. "
    assert [c.name for c in parser.tool_calls] == ["f"]


def test_json_that_is_not_a_call_stays_content() -> None:
    parser = OutputParser(thinking=False, in_thinking=False, tool_names={"f"})
    content, _ = run(parser, ['{"answer": 42}'])
    assert content == '{"answer": 42}'
    assert parser.tool_calls == []


def test_unknown_tool_name_stays_content() -> None:
    parser = OutputParser(thinking=False, in_thinking=False, tool_names={"f"})
    content, _ = run(parser, ['{"name": "rm_rf", "arguments": {}}'])
    assert "rm_rf" in content
    assert parser.tool_calls == []


def test_newline_after_a_tool_call_arriving_alone_is_markup() -> None:
    # The scheduler sends one token at a time; "\n" between two calls is usually its own token.
    parser = OutputParser(thinking=False, in_thinking=False, tool_names={"f"})
    content, _ = run(parser, ['<tool_call>{"name": "f", "arguments": {}}</tool_call>', "\n",
                              '<tool_call>{"name": "f", "arguments": {"x": 2}}</tool_call>'])
    assert content == ""
    assert [c.arguments for c in parser.tool_calls] == [{}, {"x": 2}]
