"""Coding agents against homeport, unchanged: the requests Claude Code and Codex really send.

Claude Code (``ANTHROPIC_BASE_URL`` at homeport) sends a system message among the messages, cache
control everywhere, server and client built-in tools, ``metadata``, ``context_management`` and
adaptive thinking, to ``/v1/messages?beta=true``, and asks ``count_tokens`` with its tools. Codex
(``codex exec --oss``, or ``wire_api = "responses"``) reads ``/api/version`` first, then sends
the Responses API a ``namespace`` of MCP functions, a ``custom`` (free-form) ``apply_patch``,
hosted tools (``web_search``, ``image_generation``), and ``include``, ``store``,
``prompt_cache_key``, ``parallel_tool_calls``, ``reasoning``, ``text.verbosity``,
``client_metadata``; it routes a call by its ``name`` and ``namespace`` fields (openai/codex
codex-rs: tools/src/tool_spec.rs, core/src/tools/router.rs). The shapes are sent with the real
``anthropic`` and ``openai`` packages and httpx; the assertions are about the protocol, not
about what a 135M model says.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.conftest import MODEL
from tests.support.models import TOOLS_TEMPLATE
from tests.support.server import ServerProcess

AGENT_MODEL = "agent-tools:latest"
GREEDY: dict[str, Any] = {"temperature": 0}

# --- Claude Code ----------------------------------------------------------------------------------

CACHED = {"type": "ephemeral"}
CLAUDE_TOOLS: list[dict[str, Any]] = [
    {"name": "Read", "description": "Reads a file from the local filesystem.",
     "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}},
                      "required": ["file_path"], "additionalProperties": False,
                      "$schema": "http://json-schema.org/draft-07/schema#"}},
    {"type": "custom", "name": "Glob", "description": "Fast file pattern matching.",
     "input_schema": {"type": "object", "properties": {"pattern": {"type": "string"}},
                      "required": ["pattern"]}, "cache_control": CACHED},
    {"type": "bash_20250124", "name": "bash"},
    {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
    {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
]
CLAUDE_MESSAGES: list[dict[str, Any]] = [
    {"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>As you answer, use the context.</system-reminder>"},
        {"type": "text", "text": "Which files are here?", "cache_control": CACHED}]},
    {"role": "system", "content": "Available agent types: general-purpose, Explore, Plan."},
    {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "I should list the files.", "signature": "c2lnbmVk"},
        {"type": "redacted_thinking", "data": "ZW5jcnlwdGVk"},
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_01", "name": "Glob", "input": {"pattern": "*"}},
        {"type": "server_tool_use", "id": "srvtoolu_01", "name": "web_search",
         "input": {"query": "homeport"}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_01", "content": []}]},
    {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_01", "cache_control": CACHED,
         "content": [{"type": "text", "text": "README.md\nsrc/"}]},
        {"type": "document", "title": "notes.txt", "cache_control": CACHED,
         "source": {"type": "text", "media_type": "text/plain", "data": "Keep answers short."}},
        {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
        {"type": "text", "text": "Summarise in one line."}]},
]
CLAUDE_EXTRAS: dict[str, Any] = {
    "metadata": {"user_id": "user_abc_account_def_session_123"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "service_tier": "auto",
    "container": None,
    **GREEDY,
}


@pytest.fixture(scope="module")
def agent_model(server: ServerProcess) -> Iterator[str]:
    """The bundled model under a chat template that shows tools (gone again afterwards, so the
    shared server's model list is as other tests expect it)."""
    client = ollama.Client(host=server.url)
    client.create(AGENT_MODEL, from_=MODEL, template=TOOLS_TEMPLATE)
    yield AGENT_MODEL
    client.delete(AGENT_MODEL)


@pytest.fixture
def claude(server: ServerProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="ollama", max_retries=0)


def test_claude_codes_request_is_answered(claude: anthropic.Anthropic, agent_model: str) -> None:
    """A system message among the messages, every block and tool kind Claude Code sends: 200,
    streamed as the SDK expects, and the same answer without the stream."""
    request: dict[str, Any] = {
        "model": agent_model, "max_tokens": 12, "messages": CLAUDE_MESSAGES,
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": CACHED}],
        "tools": CLAUDE_TOOLS, "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "thinking": {"type": "adaptive"}}
    with claude.messages.stream(**request, extra_body=CLAUDE_EXTRAS,
                                extra_query={"beta": "true"}) as stream:
        streamed = stream.get_final_message()
    assert streamed.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert 0 < streamed.usage.output_tokens <= 12
    whole = claude.messages.create(**request, extra_body=CLAUDE_EXTRAS)
    assert whole.stop_reason == streamed.stop_reason
    assert [block.type for block in whole.content] == [block.type for block in streamed.content]


def test_a_system_message_among_the_messages_is_a_system_turn(
        claude: anthropic.Anthropic, server: ServerProcess) -> None:
    """It renders as /api/chat renders a system message in that place: greedy decoding gives the
    same answer."""
    messages = [{"role": "user", "content": "Hello."},
                {"role": "system", "content": "Answer in French."},
                {"role": "user", "content": "Name a colour."}]
    message = claude.messages.create(model=MODEL, max_tokens=10, messages=messages,  # type: ignore[arg-type]
                                     extra_body=GREEDY)
    native = httpx.post(f"{server.url}/api/chat", timeout=120, json={
        "model": MODEL, "stream": False, "messages": messages,
        "options": {"temperature": 0, "num_predict": 10}}).json()
    assert message.content[0].text == native["message"]["content"]  # type: ignore[union-attr]


def test_count_tokens_counts_the_tools(claude: anthropic.Anthropic, agent_model: str) -> None:
    """count_tokens sees the request /v1/messages sees, tools and all."""
    question: list[Any] = [{"role": "user", "content": "Which files are here?"}]
    with_tools = claude.messages.count_tokens(model=agent_model, messages=question,
                                              tools=CLAUDE_TOOLS)  # type: ignore[arg-type]
    without = claude.messages.count_tokens(model=agent_model, messages=question)
    assert with_tools.input_tokens > without.input_tokens
    message = claude.messages.create(model=agent_model, max_tokens=1, messages=question,
                                     tools=CLAUDE_TOOLS, extra_body=GREEDY)  # type: ignore[arg-type]
    read = message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
    assert with_tools.input_tokens == read


def test_count_tokens_counts_tools_a_template_cannot_show(claude: anthropic.Anthropic) -> None:
    """The bundled model's template has no place for tools; their JSON still counts."""
    question: list[Any] = [{"role": "user", "content": "Which files are here?"}]
    with_tools = claude.messages.count_tokens(model=MODEL, messages=question, system="Be brief.",
                                              tools=CLAUDE_TOOLS)  # type: ignore[arg-type]
    without = claude.messages.count_tokens(model=MODEL, messages=question, system="Be brief.")
    assert with_tools.input_tokens > without.input_tokens + 10 * len(CLAUDE_TOOLS)


# --- Codex ----------------------------------------------------------------------------------------

READ_FILE = {"type": "function", "name": "read_file", "description": "Read a file.",
             "strict": False, "parameters": {
                 "type": "object", "properties": {"path": {"type": "string"}},
                 "required": ["path"], "additionalProperties": False}}
CODEX_TOOLS: list[dict[str, Any]] = [
    {"type": "function", "name": "shell_command", "description": "Runs a shell command.",
     "strict": False, "parameters": {
         "type": "object", "properties": {"command": {"type": "string"},
                                          "workdir": {"type": "string"}},
         "required": ["command"], "additionalProperties": False}},
    {"type": "namespace", "name": "mcp__files__",
     "description": "Tools in the mcp__files__ namespace.", "tools": [READ_FILE]},
    {"type": "custom", "name": "apply_patch", "description": "Edit files with a patch.",
     "format": {"type": "grammar", "syntax": "lark",
                "definition": 'start: "*** Begin Patch" LF "*** End Patch"\nLF: "\\n"'}},
    {"type": "web_search", "external_web_access": False},
    {"type": "image_generation", "output_format": "png"},
    {"type": "local_shell"},
]
CODEX_FIELDS: dict[str, Any] = {
    "tool_choice": "auto", "parallel_tool_calls": False, "store": False,
    "reasoning": {"effort": "medium", "summary": "auto"},
    "include": ["reasoning.encrypted_content"], "prompt_cache_key": "0199-thread-id",
    "text": {"verbosity": "low"}, "service_tier": "default",
    "client_metadata": {"originator": "codex_exec"},
}
CODEX_INPUT: list[dict[str, Any]] = [
    {"type": "message", "role": "developer",
     "content": [{"type": "input_text", "text": "<permissions>workspace-write</permissions>"}]},
    {"type": "message", "role": "user",
     "content": [{"type": "input_text", "text": "<environment_context>cwd=/repo"
                                                "</environment_context>"}]},
    {"type": "message", "role": "user",
     "content": [{"type": "input_text", "text": "Read README.md."}]},
]


def _forced_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """``text.format`` that makes the model answer with one call of ``name`` (the template's
    JSON tool-call form), so the call's way back is certain whatever the model would choose."""
    return {"format": {"type": "json_schema", "name": "call", "schema": {
        "type": "object", "required": ["name", "arguments"],
        "properties": {"name": {"type": "string", "enum": [name]},
                       "arguments": {"type": "object", "required": list(arguments),
                                     "properties": arguments}}}}}


@pytest.fixture
def responses_client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="ollama", max_retries=0)


def _codex_body(model: str, **changes: Any) -> dict[str, Any]:
    return {"model": model, "instructions": "You are Codex, a coding agent.",
            "input": CODEX_INPUT, "tools": CODEX_TOOLS, "stream": True, **CODEX_FIELDS,
            "max_output_tokens": 60, "temperature": 0, **changes}


def _events(server: ServerProcess, body: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The stream's events as (the ``event:`` line's name, the data), as Codex reads them."""
    with httpx.stream("POST", f"{server.url}/v1/responses", json=body, timeout=300) as response:
        assert response.status_code == 200, response.read()
        name = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                yield name, json.loads(line.removeprefix("data: "))
                name = ""


def test_codex_finds_a_new_enough_ollama(server: ServerProcess) -> None:
    """Codex refuses an Ollama older than 0.13.4; homeport serves the APIs of 0.14.0."""
    version = httpx.get(f"{server.url}/api/version").json()["version"]
    assert tuple(int(part) for part in version.split(".")) >= (0, 14, 0)


def test_codexs_request_is_answered(responses_client: openai.OpenAI, agent_model: str) -> None:
    """Namespaces, a custom tool, hosted tools and every field Codex adds: accepted, answered."""
    body = _codex_body(agent_model, stream=False, max_output_tokens=12)
    metadata = body.pop("client_metadata")
    response = responses_client.responses.create(**body, extra_body={"client_metadata": metadata})
    assert response.status in ("completed", "incomplete")
    assert response.output
    assert {tool.type for tool in response.tools} == {"function"}  # what runs here


def test_a_namespaced_call_comes_back_by_name_and_namespace(server: ServerProcess,
                                                            agent_model: str) -> None:
    body = _codex_body(agent_model, text=_forced_call(
        "mcp__files__.read_file", {"path": {"type": "string"}}))
    events = list(_events(server, body))
    assert all(name == data["type"] for name, data in events)
    done = [data["item"] for _, data in events if data["type"] == "response.output_item.done"]
    calls = [item for item in done if item["type"] == "function_call"]
    assert len(calls) == 1, done
    assert calls[0]["name"] == "read_file"
    assert calls[0]["namespace"] == "mcp__files__"
    assert isinstance(json.loads(calls[0]["arguments"])["path"], str)
    finished = events[-1][1]
    assert finished["type"] == "response.completed"
    assert finished["response"]["output"][-1] == calls[0]


def test_a_custom_tool_call_comes_back_as_text_input(server: ServerProcess,
                                                     agent_model: str) -> None:
    body = _codex_body(agent_model, text=_forced_call("apply_patch", {"input": {"type": "string"}}))
    events = list(_events(server, body))
    kinds = [data["type"] for _, data in events]
    assert "response.custom_tool_call_input.done" in kinds
    done = [data["item"] for _, data in events if data["type"] == "response.output_item.done"]
    calls = [item for item in done if item["type"] == "custom_tool_call"]
    assert len(calls) == 1, done
    assert calls[0]["name"] == "apply_patch"
    assert isinstance(calls[0]["input"], str)
    assert "namespace" not in calls[0]
    assert "arguments" not in calls[0]


def test_codexs_history_of_calls_is_read_back(responses_client: openai.OpenAI,
                                              agent_model: str) -> None:
    """The next turn carries the calls and their outputs, reasoning with encrypted content, and
    a hosted tool's record: all accepted."""
    history = [
        *CODEX_INPUT,
        {"type": "reasoning", "summary": [], "encrypted_content": "gAAAA-opaque"},
        {"type": "function_call", "name": "read_file", "namespace": "mcp__files__",
         "arguments": "{\"path\":\"README.md\"}", "call_id": "call_1"},
        {"type": "function_call_output", "call_id": "call_1", "output": "# homeport"},
        {"type": "custom_tool_call", "status": "completed", "call_id": "call_2",
         "name": "apply_patch", "input": "*** Begin Patch\n*** End Patch"},
        {"type": "custom_tool_call_output", "call_id": "call_2", "output": "Done!"},
        {"type": "web_search_call", "status": "completed",
         "action": {"type": "search", "query": "homeport"}},
        {"type": "function_call_output", "call_id": "call_3",
         "output": [{"type": "input_text", "text": "exit code 0"}]},
    ]
    response = responses_client.responses.create(
        model=agent_model, input=history, tools=CODEX_TOOLS,  # type: ignore[arg-type]
        max_output_tokens=8, temperature=0, store=False,
        reasoning={"effort": "xhigh"})  # type: ignore[typeddict-item]
    assert response.status in ("completed", "incomplete")
    assert response.output


def test_every_stream_event_is_named(server: ServerProcess) -> None:
    body = {"model": MODEL, "input": "Say hi.", "stream": True, "max_output_tokens": 8,
            "temperature": 0}
    events = list(_events(server, body))
    assert events[0] == ("response.created", events[0][1])
    assert all(name and name == data["type"] for name, data in events)


def test_a_message_cut_short_is_incomplete(server: ServerProcess,
                                           responses_client: openai.OpenAI) -> None:
    """max_output_tokens cut the answer: the message item is incomplete, as the response is, in
    the stream's output_item.done and response.incomplete, and without a stream."""
    body = {"model": MODEL, "input": "Write a long story about the sea.", "stream": True,
            "max_output_tokens": 3, "temperature": 0}
    events = [data for _, data in _events(server, body)]
    done = [event["item"] for event in events if event["type"] == "response.output_item.done"]
    assert [item["status"] for item in done if item["type"] == "message"] == ["incomplete"]
    assert events[-1]["type"] == "response.incomplete"
    final = events[-1]["response"]
    assert final["status"] == "incomplete"
    assert [item["status"] for item in final["output"]] == ["incomplete"]

    whole = responses_client.responses.create(model=MODEL, input=body["input"],
                                              max_output_tokens=3, temperature=0)
    assert whole.status == "incomplete"
    assert [item.status for item in whole.output] == ["incomplete"]  # type: ignore[union-attr]
