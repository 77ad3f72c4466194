"""Chat templates: the GGUF's own ``tokenizer.chat_template``, rendered only in Jinja2's immutable
sandbox.

A template is untrusted input (llama-cpp-python's CVE-2024-34359 ran Python code from one), so it is
compiled in ``ImmutableSandboxedEnvironment``: attribute access to Python internals raises
``SecurityError`` and the rendered output is bounded. A template that fails to compile or render is
a 400 naming the problem, never a crash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from homeport.errors import BadRequestError

MAX_RENDERED_CHARS = 4 * 1024 * 1024

# Used when a model file carries no template: ChatML, which most small instruct models understand.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TemplateRenderError(BadRequestError):
    pass


def _raise_exception(message: str) -> None:
    raise TemplateRenderError(f"chat template error: {message}")


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False,
            sort_keys: bool = False, separators: Any = None) -> str:
    # HF templates call tojson with Python's keyword arguments; Jinja's own filter rejects them.
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys,
                      separators=separators)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, undefined=jinja2.Undefined,
        extensions=["jinja2.ext.loopcontrols"],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    try:
        return _environment().from_string(source)
    except TemplateError as exc:
        raise TemplateRenderError(f"chat template does not compile: {exc}") from None


@dataclass(frozen=True)
class TemplateFeatures:
    """What a template can do, judged from the variables it mentions."""

    tools: bool
    thinking: bool


def template_features(source: str | None) -> TemplateFeatures:
    if not source:
        return TemplateFeatures(tools=False, thinking=False)
    return TemplateFeatures(
        tools="tools" in source or "tool_calls" in source,
        thinking="<think>" in source or "enable_thinking" in source
        or "reasoning_content" in source,
    )


def render_chat(
    source: str | None,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    enable_thinking: bool | None = None,
) -> str:
    """Render ``messages`` with the model's template in the sandbox."""
    template = _compile(source or FALLBACK_TEMPLATE)
    context: dict[str, Any] = {
        "messages": messages,
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos_token,
        "eos_token": eos_token,
    }
    if tools:
        context["tools"] = tools
    if enable_thinking is not None:
        context["enable_thinking"] = enable_thinking
    try:
        rendered = template.render(**context)
    except SecurityError:
        raise TemplateRenderError(
            "chat template tried to reach Python internals and was refused") from None
    except TemplateRenderError:
        raise
    except (TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise TemplateRenderError(f"chat template failed to render: {exc}") from None
    if len(rendered) > MAX_RENDERED_CHARS:
        raise TemplateRenderError("chat template produced an oversized prompt")
    return rendered
