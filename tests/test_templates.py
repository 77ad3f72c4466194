"""Chat templates from the model file: tools, thinking, and a template that tries to escape."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.support.cli import homeport
from tests.support.models import TOOLS_TEMPLATE, gguf_with_template, install_model
from tests.support.server import ServerProcess

THINKING_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)
ESCAPING_TEMPLATE = (
    "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch CANARY') }}"
    "{{ ''.__class__.__mro__[1].__subclasses__() }}"
)
ENDLESS_TEMPLATE = (  # 10^10 steps: hours of CPU, and no output to notice it by
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
)
# One 8 GB string, asked for at once: over the renderer's memory limit at the first step, so the
# memory limit (not the time limit) is what stops it, however busy the machine.
BLOATING_TEMPLATE = "{{ 'homeport' * 1000000000 }}"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TOOL_CALL_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "enum": ["get_weather"]},
                   "arguments": {"type": "object", "properties": {"city": {"type": "string"}},
                                 "required": ["city"]}},
    "required": ["name", "arguments"],
}
OPTIONS = {"temperature": 0, "seed": 5, "num_predict": 60}


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("canary") / "pwned"


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory, canary: Path) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("templates")
    files = home / "files"
    files.mkdir()
    models = home / "data" / "models"
    install_model(models, "tooly:latest", gguf_with_template(files / "t.gguf", TOOLS_TEMPLATE))
    install_model(models, "thinker:latest",
                  gguf_with_template(files / "k.gguf", THINKING_TEMPLATE))
    install_model(models, "escaper:latest", gguf_with_template(
        files / "e.gguf", ESCAPING_TEMPLATE.replace("CANARY", str(canary))))
    install_model(models, "endless:latest",
                  gguf_with_template(files / "n.gguf", ENDLESS_TEMPLATE))
    install_model(models, "bloating:latest",
                  gguf_with_template(files / "b.gguf", BLOATING_TEMPLATE))
    # A render time limit long enough that the other requests made while the endless template
    # renders are certain to finish first, however busy the machine.
    with ServerProcess(home, env={"HOMEPORT_CONTEXT_LENGTH": "1024", "HOMEPORT_NUM_PARALLEL": "2",
                                  "HOMEPORT_TEMPLATE_TIMEOUT": "30s"}) as process:
        yield process


def test_capabilities_follow_the_template(variants: ServerProcess) -> None:
    client = ollama.Client(host=variants.url)
    assert "tools" in (client.show("tooly").capabilities or [])
    assert "thinking" in (client.show("thinker").capabilities or [])
    assert "tools" not in (client.show("thinker").capabilities or [])


def test_tool_calls_are_parsed_into_objects(variants: ServerProcess) -> None:
    client = ollama.Client(host=variants.url)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    reply = client.chat("tooly", messages=messages, tools=[WEATHER_TOOL],
                        format=TOOL_CALL_SCHEMA, options=OPTIONS)
    calls = reply.message.tool_calls
    assert calls, reply.message
    assert calls[0].function.name == "get_weather"
    assert isinstance(calls[0].function.arguments, dict)
    assert isinstance(calls[0].function.arguments["city"], str)
    assert reply.message.content == ""
    streamed = list(client.chat("tooly", messages=messages, tools=[WEATHER_TOOL],
                                format=TOOL_CALL_SCHEMA, options=OPTIONS, stream=True))
    streamed_calls = [call for chunk in streamed for call in (chunk.message.tool_calls or [])]
    assert [c.function.arguments for c in streamed_calls] == [c.function.arguments for c in calls]
    # The tool's answer goes back in and the conversation continues.
    followup = client.chat("tooly", options=OPTIONS, tools=[WEATHER_TOOL], messages=[
        *messages, reply.message,
        {"role": "tool", "content": "18 degrees and sunny", "tool_name": "get_weather"}])
    assert followup.done


def test_openai_tool_calls_have_string_arguments(variants: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{variants.url}/v1", api_key="x", max_retries=0)
    completion = client.chat.completions.create(
        model="tooly", messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER_TOOL], temperature=0, seed=5, max_tokens=60,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "call", "schema": TOOL_CALL_SCHEMA}})
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    assert choice.message.tool_calls[0].function.name == "get_weather"
    assert '"city"' in choice.message.tool_calls[0].function.arguments


def test_anthropic_tool_use_and_tool_result(variants: ServerProcess) -> None:
    """The Messages API: a tool call comes back as a tool_use block (streamed as
    input_json_delta), and a tool_result block carries the answer back in."""
    client = anthropic.Anthropic(base_url=variants.url, api_key="ollama", max_retries=0)
    tool = {"name": "get_weather", "description": "Current weather for a city",
            "input_schema": WEATHER_TOOL["function"]["parameters"]}
    question = {"role": "user", "content": "What is the weather in Paris?"}
    request: dict[str, Any] = {
        "model": "tooly", "max_tokens": 60, "tools": [tool], "messages": [question],
        "output_config": {"format": {"type": "json_schema", "schema": TOOL_CALL_SCHEMA}},
        "extra_body": {"temperature": 0}}
    message = client.messages.create(**request)
    assert message.stop_reason == "tool_use"
    uses = [block for block in message.content if block.type == "tool_use"]
    assert [use.name for use in uses] == ["get_weather"]
    assert isinstance(uses[0].input["city"], str)
    assert uses[0].id.startswith("toolu_")
    with client.messages.stream(**request) as stream:
        final = stream.get_final_message()
    assert [(b.name, b.input) for b in final.content if b.type == "tool_use"] == [
        (uses[0].name, uses[0].input)]
    followup = client.messages.create(
        model="tooly", max_tokens=20, tools=[tool], extra_body={"temperature": 0}, messages=[
            question, {"role": "assistant", "content": [use.model_dump() for use in uses]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                          "content": "18 degrees and sunny"}]}])
    assert followup.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_anthropic_thinking_blocks(variants: ServerProcess) -> None:
    client = anthropic.Anthropic(base_url=variants.url, api_key="ollama", max_retries=0)
    request: dict[str, Any] = {
        "model": "thinker", "max_tokens": 60, "extra_body": {"temperature": 0},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": "Why is the sea salty?"}]}
    message = client.messages.create(**request)
    assert message.content[0].type == "thinking"
    thought = message.content[0].thinking
    assert thought
    with client.messages.stream(**request) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "thinking"
    assert final.content[0].thinking == thought


def test_responses_function_calls_and_their_outputs(variants: ServerProcess) -> None:
    """The Responses API: a tool call is a function_call item (streamed through
    function_call_arguments events), and a function_call_output item carries the answer back."""
    client = openai.OpenAI(base_url=f"{variants.url}/v1", api_key="x", max_retries=0)
    tool = {"type": "function", **WEATHER_TOOL["function"]}
    request: dict[str, Any] = {
        "model": "tooly", "input": "What is the weather in Paris?", "tools": [tool],
        "temperature": 0, "max_output_tokens": 60,
        "text": {"format": {"type": "json_schema", "name": "call", "schema": TOOL_CALL_SCHEMA}}}
    response = client.responses.create(**request)
    calls = [item for item in response.output if item.type == "function_call"]
    assert [call.name for call in calls] == ["get_weather"]
    assert isinstance(json.loads(calls[0].arguments)["city"], str)
    with client.responses.stream(**request) as stream:
        arguments = [e.arguments for e in stream
                     if e.type == "response.function_call_arguments.done"]
        final = stream.get_final_response()
    assert arguments == [calls[0].arguments]
    assert [item.type for item in final.output] == ["function_call"]
    followup = client.responses.create(
        model="tooly", tools=[tool], temperature=0, max_output_tokens=20, input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
             "arguments": calls[0].arguments},
            {"type": "function_call_output", "call_id": calls[0].call_id,
             "output": "18 degrees and sunny"}])
    assert followup.status in ("completed", "incomplete")


def test_responses_reasoning_items(variants: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{variants.url}/v1", api_key="x", max_retries=0)
    response = client.responses.create(model="thinker", input="Why is the sea salty?",
                                       reasoning={"effort": "high"}, temperature=0,
                                       max_output_tokens=60)
    assert response.output[0].type == "reasoning"
    assert response.output[0].content
    assert response.output[0].content[0].text


def test_thinking_goes_to_thinking_never_content(variants: ServerProcess) -> None:
    client = ollama.Client(host=variants.url)
    messages = [{"role": "user", "content": "Why is the sea salty?"}]
    reply = client.chat("thinker", messages=messages, think=True, options=OPTIONS)
    assert reply.message.thinking
    assert reply.message.content == ""  # the model never closed </think> within 60 tokens
    chunks = list(client.chat("thinker", messages=messages, think=True, options=OPTIONS,
                              stream=True))
    assert "".join(c.message.thinking or "" for c in chunks) == reply.message.thinking
    assert all(not c.message.content for c in chunks)


def test_run_shows_thinking_apart(variants: ServerProcess) -> None:
    result = homeport("run", "thinker", "Why is the sea salty?", "--think", "true",
                      env={"OLLAMA_ENDPOINT": variants.url})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Thinking...\n")
    assert "\033[" not in result.stdout  # no terminal codes in piped output


def test_think_false_answers_in_content(variants: ServerProcess) -> None:
    client = ollama.Client(host=variants.url)
    reply = client.chat("thinker", messages=[{"role": "user", "content": "Say hi."}],
                        think=False, options=OPTIONS)
    assert reply.message.content
    assert not reply.message.thinking


def test_a_template_reaching_python_internals_is_refused(variants: ServerProcess,
                                                          canary: Path) -> None:
    reply = httpx.post(f"{variants.url}/api/chat", timeout=60, json={
        "model": "escaper", "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 400
    assert "chat template" in reply.json()["error"]
    assert not canary.exists()
    healthy = httpx.post(f"{variants.url}/api/chat", timeout=60, json={
        "model": "tooly", "stream": False, "options": OPTIONS,
        "messages": [{"role": "user", "content": "hi"}]})
    assert healthy.status_code == 200


def test_a_template_that_never_ends_is_stopped_while_the_server_goes_on(
        variants: ServerProcess) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        endless = pool.submit(httpx.post, f"{variants.url}/api/chat", timeout=120, json={
            "model": "endless", "messages": [{"role": "user", "content": "hi"}]})
        time.sleep(0.5)
        # While that template renders, the server answers, and a prompt that needs no
        # template runs to the end.
        assert httpx.get(f"{variants.url}/api/tags", timeout=2).status_code == 200
        raw = httpx.post(f"{variants.url}/api/generate", timeout=30, json={
            "model": "tooly", "prompt": "Once upon a time", "raw": True, "stream": False,
            "options": OPTIONS})
        assert raw.status_code == 200
        assert not endless.done()
        reply = endless.result()
    assert reply.status_code == 400
    assert "took longer than 30s" in reply.json()["error"]
    assert time.monotonic() - started < 120  # stopped at its limit, not left to run for hours
    healthy = httpx.post(f"{variants.url}/api/chat", timeout=60, json={
        "model": "tooly", "stream": False, "options": OPTIONS,
        "messages": [{"role": "user", "content": "hi"}]})
    assert healthy.status_code == 200


def test_a_template_that_fills_memory_is_stopped(variants: ServerProcess) -> None:
    reply = httpx.post(f"{variants.url}/api/chat", timeout=60, json={
        "model": "bloating", "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 400
    assert "MiB" in reply.json()["error"]
    healthy = httpx.post(f"{variants.url}/api/chat", timeout=60, json={
        "model": "tooly", "stream": False, "options": OPTIONS,
        "messages": [{"role": "user", "content": "hi"}]})
    assert healthy.status_code == 200
