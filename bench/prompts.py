"""What the benchmark asks: distinct essay prompts for the streams, follow-ups for the chat.

Every stream gets its own prompt so that no server answers one from a prompt cache filled by an
earlier stream. The prompts ask for long essays: with greedy decoding SmolLM2-135M writes past
128 tokens for each of them, so even a server that cannot ignore the end-of-text token (homeport,
like Ollama, has no such option) produces full-length answers.
"""

from __future__ import annotations

from typing import TypedDict

TOPICS = (
    "the history of the printing press", "how bread is baked", "the life cycle of stars",
    "the water cycle", "the invention of the telephone", "how bees make honey", "the Roman Empire",
    "volcanoes", "the human heart", "the history of chess", "how airplanes fly", "coral reefs",
    "the Silk Road", "photosynthesis", "the moon landing", "the history of jazz",
    "how computers store data", "rainforests", "the Great Wall of China", "the immune system",
    "the history of the bicycle", "ocean tides", "ancient Egypt",
)

CHAT_SUBJECTS = (
    "how a small town library works", "how a city bus network is run",
    "how a village bakery plans its day", "how a mountain rescue team operates",
    "how a community garden is organised",
)
CHAT_QUESTIONS = (
    "I want to understand {subject}. Give me a detailed overview.",
    "Tell me more about how the people involved decide what to spend money on.",
    "How is the daily work organised? Explain in detail.",
    "What happens when something breaks or goes missing?",
    "Describe the events and programs it might run for children.",
    "How is it funded, and what does the money pay for?",
    "What role do volunteers play? Give examples.",
    "How has the internet changed the way it works?",
    "What problems might it face in the next ten years?",
    "Summarise everything we discussed, in detail, as a short essay.",
)


def chat_questions(conversation: int) -> list[str]:
    """The questions of conversation ``conversation``: each has its own subject, so its first
    turn is no prompt a server has seen (only the system prompt before it is shared)."""
    subject = CHAT_SUBJECTS[conversation % len(CHAT_SUBJECTS)]
    return [question.format(subject=subject) for question in CHAT_QUESTIONS]


class Message(TypedDict):
    role: str
    content: str


def essay_messages(index: int) -> list[Message]:
    """The chat for stream ``index``: a different essay for each index. Topics cycle; a later
    round numbers its essays, so no prompt is ever sent twice and no server answers one from a
    cache of a whole earlier prompt, while all share the same opening as real prompts do."""
    topic = TOPICS[index % len(TOPICS)]
    cycle = index // len(TOPICS)
    number = f" This is essay number {cycle + 1} on it." if cycle else ""
    return [{"role": "user", "content":
             f"Write a long, detailed essay about {topic}, with several paragraphs.{number}"}]


class PromptSequence:
    """Hands out distinct essay prompts, in order, across all workloads of one peer."""

    def __init__(self) -> None:
        self._next = 0

    def take(self, count: int) -> list[list[Message]]:
        taken = [essay_messages(self._next + offset) for offset in range(count)]
        self._next += count
        return taken
