"""Request bodies, validated at the edge with pydantic (strict: a string is not a number).

Unknown top-level fields are ignored, as Ollama and OpenAI ignore them; wrong types are a 400 that
names the field. ``keep_alive`` accepts seconds (number) or a Go duration string, never a bare
numeric string.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from homeport.durations import normalize_keep_alive, parse_go_duration, seconds_from_number


def parse_keep_alive(value: Any) -> float | None:
    """Seconds to keep a model loaded (math.inf = forever), or None for the server default."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("keep_alive must be a number of seconds or a duration such as \"5m\"")
    if isinstance(value, int | float):
        return normalize_keep_alive(seconds_from_number(value))
    if isinstance(value, str):
        if value == "":
            return None
        return normalize_keep_alive(parse_go_duration(value))
    raise ValueError("keep_alive must be a number of seconds or a duration such as \"5m\"")


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class _WithKeepAlive(_Request):
    keep_alive: float | None = None

    @field_validator("keep_alive", mode="plain")
    @classmethod
    def _keep_alive(cls, value: Any) -> float | None:
        return parse_keep_alive(value)


class ToolCallFunctionIn(_Request):
    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)
    index: int | None = None


class ToolCallIn(_Request):
    id: str | None = None
    type: str | None = None
    function: ToolCallFunctionIn


class MessageIn(_Request):
    role: str
    content: str | None = None
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class ToolFunction(_Request):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Request):
    type: str = "function"
    function: ToolFunction


Think = bool | Literal["low", "medium", "high"] | None
Format = str | dict[str, Any] | None


class ChatRequest(_WithKeepAlive):
    model: str = ""
    messages: list[MessageIn] = Field(default_factory=list)
    tools: list[Tool] | None = None
    format: Format = None
    options: dict[str, Any] | None = None
    stream: bool | None = True
    think: Think = None
    truncate: bool | None = None


class GenerateRequest(_WithKeepAlive):
    model: str = ""
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    stream: bool | None = True
    raw: bool = False
    format: Format = None
    images: list[str] | None = None
    options: dict[str, Any] | None = None
    think: Think = None
    truncate: bool | None = None


class EmbedRequest(_WithKeepAlive):
    model: str = ""
    input: str | list[str] = ""
    truncate: bool | None = None
    dimensions: int | None = Field(default=None, gt=0)
    options: dict[str, Any] | None = None


class EmbeddingsRequest(_WithKeepAlive):
    model: str = ""
    prompt: str = ""
    options: dict[str, Any] | None = None


class ShowRequest(_Request):
    model: str = ""
    name: str = ""  # legacy spelling
    verbose: bool = False


class CopyRequest(_Request):
    source: str = ""
    destination: str = ""


class DeleteRequest(_Request):
    model: str = ""
    name: str = ""  # legacy spelling


class PullRequest(_Request):
    model: str = ""
    name: str = ""  # legacy spelling
    insecure: bool = False
    stream: bool | None = True


class CreateRequest(_Request):
    model: str = ""
    name: str = ""  # legacy spelling
    from_: str | None = Field(default=None, alias="from")
    files: dict[str, str] | None = None
    draft_files: dict[str, str] | None = None  # the draft model's GGUF, uploaded like files
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[MessageIn] | None = None
    quantize: str | None = None
    quantization: str | None = None  # legacy spelling
    draft_quantize: str | None = None
    modelfile: str | None = None  # the old API; refused with a pointer to the new one
    stream: bool | None = True


# --- OpenAI ---------------------------------------------------------------------------------------


class OpenAIStreamOptions(_Request):
    include_usage: bool = False


class OpenAIResponseFormat(_Request):
    type: str
    json_schema: dict[str, Any] | None = None


class OpenAIMessage(_Request):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    reasoning: str | None = None


class OpenAIChatRequest(_Request):
    model: str = ""
    messages: list[OpenAIMessage] = Field(default_factory=list)
    stream: bool = False
    stream_options: OpenAIStreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    response_format: OpenAIResponseFormat | None = None
    tools: list[Tool] | None = None
    reasoning_effort: str | None = None


class OpenAICompletionRequest(_Request):
    model: str = ""
    prompt: str | list[str] = ""
    stream: bool = False
    stream_options: OpenAIStreamOptions | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    suffix: str | None = None
    echo: bool = False


class OpenAIEmbeddingRequest(_Request):
    model: str = ""
    input: str | list[str] = ""
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, gt=0)


# --- Anthropic ------------------------------------------------------------------------------------


class AnthropicMessage(_Request):
    # The current API also takes a system message among the others (Claude Code sends one).
    role: Literal["user", "assistant", "system"]
    content: str | list[dict[str, Any]]


class AnthropicTool(_Request):
    """A tool: ``custom`` (or untyped) with an input schema, or a built-in one (``bash_…``,
    ``text_editor_…``, ``web_search_…``) that has only a type and a name."""
    type: str | None = None
    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class AnthropicThinking(_Request):
    type: str  # enabled, adaptive, ...: anything but "disabled" turns thinking on
    budget_tokens: int | None = None


class AnthropicOutputFormat(_Request):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class AnthropicOutputConfig(_Request):
    format: AnthropicOutputFormat | None = None
    effort: str | None = None


class AnthropicToolChoice(_Request):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None


class AnthropicMessagesRequest(_Request):
    model: str = ""
    messages: list[AnthropicMessage] = Field(default_factory=list)
    max_tokens: int | None = Field(default=None, gt=0)
    system: str | list[dict[str, Any]] | None = None
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: list[str] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None
    thinking: AnthropicThinking | None = None
    output_config: AnthropicOutputConfig | None = None


# --- OpenAI Responses -----------------------------------------------------------------------------


class ResponsesTool(_Request):
    """A function, a ``custom`` tool (free-form text input), a ``namespace`` grouping tools,
    or a hosted tool (``web_search``, ``file_search``, ...)."""
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    tools: list[ResponsesTool] | None = None  # a namespace's members
    format: dict[str, Any] | None = None  # a custom tool's input: text, or a grammar


class ResponsesTextFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")


class ResponsesText(_Request):
    format: ResponsesTextFormat | None = None


class ResponsesReasoning(_Request):
    effort: str | None = None


class ResponsesRequest(_Request):
    model: str = ""
    input: str | list[dict[str, Any]] = ""
    instructions: str | None = None
    stream: bool = False
    max_output_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = None
    top_p: float | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    text: ResponsesText | None = None
    reasoning: ResponsesReasoning | None = None
    previous_response_id: str | None = None
