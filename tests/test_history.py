"""Conversation history in SQLite, and ``homeport history``."""

from __future__ import annotations

from homeport.client.adapters import Usage
from homeport.client.history import History, Turn, default_path
from tests.support.cli import homeport


def turn(user: str, answer: str = "an answer", **fields: object) -> Turn:
    return Turn(user, answer, "ollama", "smollm2:135m", **fields)  # type: ignore[arg-type]


def test_turns_conversations_and_search() -> None:
    with History() as history:
        first = history.add_turn(None, turn("How do I reverse a list?", "Use reversed()."),
                                 system="Be brief.")
        history.add_turn(first, turn("And a string?", "Slice with [::-1].",
                                     usage=Usage(12, 7), stopped=True), system="Be brief.")
        second = history.add_turn(None, turn("100% of _this_ matters"))
    assert (first, second) == (1, 2)
    with History() as history:  # opened again: the schema is not re-created
        conversation = history.load(first)
        assert conversation.title == "How do I reverse a list?"
        assert conversation.system == "Be brief."
        assert [t.user for t in conversation.turns] == ["How do I reverse a list?", "And a string?"]
        assert conversation.turns[1].usage == Usage(12, 7)
        assert conversation.turns[1].stopped
        assert [c.id for c in history.recent()] == [2, 1]
        assert [c.turn_count for c in history.recent()] == [1, 2]
        assert history.latest_id() == 2
        assert [hit.conversation_id for hit in history.search("SLICE")] == [1]
        assert [hit.conversation_id for hit in history.search("100%")] == [2]
        assert [hit.conversation_id for hit in history.search("%")] == [2], "% is literal"
        assert history.search("_this_")[0].snippet.startswith("100% of _this_")
    assert oct(default_path().stat().st_mode & 0o777) == "0o600"


def test_a_turn_is_kept_even_if_its_conversation_was_deleted() -> None:
    with History() as history:
        first = history.add_turn(None, turn("one"))
        history.delete(first)
        again = history.add_turn(first, turn("two"))
        assert again != first
        assert [t.user for t in history.load(again).turns] == ["two"]


def test_history_commands() -> None:
    with History() as history:
        history.add_turn(None, turn("What is [bold]rich[/bold] markup?", "Brackets."))
    listed = homeport("history")
    assert listed.returncode == 0
    assert "What is [bold]rich[/bold] markup?" in listed.stdout, "titles are not markup"
    shown = homeport("history", "show", "1")
    assert shown.stdout == ("# 1: What is [bold]rich[/bold] markup?\n\n## You\n\n"
                            "What is [bold]rich[/bold] markup?\n\n## ollama (smollm2:135m)\n\n"
                            "Brackets.\n")
    assert "Brackets." in homeport("history", "search", "markup").stdout
    assert homeport("history", "rm", "1").returncode == 0
    missing = homeport("history", "show", "1")
    assert missing.returncode == 1
    assert missing.stderr.strip() == ("Error: there is no conversation 1; `homeport history "
                                      "list` shows them")
    again = homeport("history", "rm", "1")
    assert again.returncode == 1
    assert again.stderr == missing.stderr
    assert "no conversations yet" in homeport("history", "list").stdout
