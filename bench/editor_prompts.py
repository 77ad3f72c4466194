"""What the editor workloads send (issue 15): an inline edit, CodeCompanion's chat prompt with an
attached file, and long conversations, all built from this repository's own source files.

The edit is raw completion for a base model (Gemma 3 270M): the region, a comment asking for the
changed copy, and the copy's first line; a model that copies its input then writes the rest.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from bench.prompts import Message

REPO = Path(__file__).resolve().parent.parent

# CodeCompanion.nvim's default chat system prompt (lua/codecompanion/config.lua, opts.system_prompt,
# language "English"), as its chat sends it before every conversation.
CODECOMPANION_SYSTEM = """\
You are an AI programming assistant named "CodeCompanion". You are currently plugged into the \
Neovim text editor on a user's machine.

Your core tasks include:
- Answering general programming questions.
- Explaining how the code in a Neovim buffer works.
- Reviewing the selected code from a Neovim buffer.
- Generating unit tests for the selected code.
- Proposing fixes for problems in the selected code.
- Scaffolding code for a new workspace.
- Finding relevant code to the user's query.
- Proposing fixes for test failures.
- Answering questions about Neovim.
- Running tools.

You must:
- Follow the user's requirements carefully and to the letter.
- Keep your answers short and impersonal, especially if the user's context is outside your core \
tasks.
- Minimize additional prose unless clarification is needed.
- Use Markdown formatting in your answers.
- Include the programming language name at the start of each Markdown code block.
- Avoid including line numbers in code blocks.
- Avoid wrapping the whole response in triple backticks.
- Only return code that's directly relevant to the task at hand. You may omit code that isn't \
necessary for the solution.
- Avoid using H1, H2 or H3 headers in your responses as these are reserved for the user.
- Use actual line breaks in your responses; only use "\\n" when you want a literal backslash \
followed by 'n'.
- All non-code text responses must be written in the English language indicated.
- Multiple, different tools can be called as part of the same response.

When given a task:
1. Think step-by-step and, unless the user requests otherwise or the task is very simple, \
describe your plan in detailed pseudocode.
2. Output the final code in a single code block, ensuring that only relevant code is included.
3. End your response with a short suggestion for the next user turn that directly supports \
continuing the conversation.
4. Provide exactly one complete reply per conversation turn.
5. If necessary, execute multiple tools in a single turn."""

# The edit: a region of a real source file of this repository.
EDIT_FILE = "src/homeport/store/names.py"
EDIT_FIRST_LINE = 22  # 1-based: the ModelName class and parse_name's start
EDIT_LINES = 70
EDIT_CHANGE = ('return text, "", False', 'return text, "", None')

# The file attached to the shared CodeCompanion prompt, and those the conversations discuss.
ATTACHED_FILE = "src/homeport/engine/options.py"
ATTACHED_CHARS = 3600  # with the system prompt: about 1,500 tokens
SHARED_QUESTIONS = (
    "Which options does this file bound, and why?",
    "Write a unit test for the first function in this file.",
    "Is there a bug in this file? Answer briefly.",
    "Explain this file to a new contributor in three sentences.",
    "Which function here would you split up, and how?",
    "What happens to an option this file does not know?",
    "Suggest a better name for one of these functions.",
    "List the constants this file defines.",
)
CONVERSATION_FILES = (
    "src/homeport/store/names.py", "src/homeport/engine/options.py",
    "src/homeport/store/modelfile.py", "src/homeport/net/tokens.py",
    "src/homeport/api/common.py", "src/homeport/store/prune.py",
    "src/homeport/net/guard.py", "src/homeport/engine/grammar.py",
)
CONVERSATION_CHARS = 3400  # about 1,000 tokens each
FOLLOW_UPS = (
    "What does this file do? Answer briefly.",
    "Which function in it is the most complex?",
    "Suggest one small improvement.",
    "Which names would you change?",
    "Summarise our conversation in one sentence.",
)


@dataclass(frozen=True)
class EditTask:
    """A region to be copied with one change, as a raw-completion prompt."""

    source: str  # where the region comes from, e.g. "src/homeport/store/names.py:15-84"
    region: str
    old_line: str
    new_line: str

    @property
    def prompt(self) -> str:
        first = self.region.splitlines(keepends=True)[0]
        return (f"{self.region}\n"
                f"# The code above again, with one change: the line `{self.old_line.strip()}` "
                f"becomes `{self.new_line.strip()}`.\n{first}")

    @property
    def expected(self) -> str:
        """The rest of the changed copy, after the first line the prompt already gives."""
        changed = self.region.replace(self.old_line, self.new_line, 1)
        return "".join(changed.splitlines(keepends=True)[1:])


def edit_task(repo: Path = REPO, path: str = EDIT_FILE, first_line: int = EDIT_FIRST_LINE,
              lines: int = EDIT_LINES, change: tuple[str, str] = EDIT_CHANGE) -> EditTask:
    """The region ``path:first_line`` and ``lines`` lines on, and a one-line change: ``change``
    on the line that holds its first part; if none does (the file changed), a comment added to
    the first non-blank line from the region's middle on."""
    all_lines = (repo / path).read_text().splitlines(keepends=True)
    chosen = all_lines[first_line - 1:first_line - 1 + lines]
    source = f"{path}:{first_line}-{first_line + len(chosen) - 1}"
    region = "".join(chosen)
    old_text, new_text = change
    for line in chosen[1:]:
        if old_text in line:
            return EditTask(source, region, line, line.replace(old_text, new_text, 1))
    old = next((line for line in chosen[len(chosen) // 2:] if line.strip()), chosen[-1])
    return EditTask(source, region, old, old.rstrip("\n") + "  # changed\n")


def copied_chars(source: str, output: str, min_run: int = 8) -> int:
    """Characters of ``output`` that repeat ``source`` in runs of at least ``min_run``."""
    matcher = difflib.SequenceMatcher(None, source, output, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks() if block.size >= min_run)


def _file_excerpt(path: str, chars: int, repo: Path = REPO) -> str:
    text = (repo / path).read_text()[:chars]
    return text[:text.rfind("\n") + 1] if "\n" in text else text


def attached_file_message(path: str, chars: int, question: str, repo: Path = REPO) -> str:
    """A user turn with a file attached, in the shape CodeCompanion's /file command gives it."""
    excerpt = _file_excerpt(path, chars, repo)
    return (f"Here is the content from a file (including line numbers):\n\n```python\n{path}\n"
            f"{excerpt}```\n\n{question}")


def shared_prompt_messages(clients: int, attached_chars: int = ATTACHED_CHARS
                           ) -> list[list[Message]]:
    """One conversation start per client: the same system prompt and file, its own question."""
    return [[{"role": "system", "content": CODECOMPANION_SYSTEM},
             {"role": "user", "content": attached_file_message(
                 ATTACHED_FILE, attached_chars, SHARED_QUESTIONS[i % len(SHARED_QUESTIONS)])}]
            for i in range(clients)]


def conversation_opening(index: int, chars: int = CONVERSATION_CHARS) -> list[Message]:
    """Conversation ``index``'s first turn: its own file and the first question."""
    path = CONVERSATION_FILES[index % len(CONVERSATION_FILES)]
    return [{"role": "user", "content": attached_file_message(path, chars, FOLLOW_UPS[0])}]


def follow_up(turn: int) -> str:
    return FOLLOW_UPS[turn % len(FOLLOW_UPS)]
