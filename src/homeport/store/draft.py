"""A draft model: a second, smaller GGUF stored as a model's ``draft`` layer, which the engine runs
ahead of the model to propose tokens (speculative decoding, Ollama's Modelfile ``DRAFT`` line).

The model checks the draft's proposals token by token, so they are of use only when both read and
write the same tokens: a draft is refused unless its vocabulary (tokenizer kind and token count)
is the model's.
"""

from __future__ import annotations

from homeport.errors import InvalidModelFileError
from homeport.store.gguf import ArraySummary, GGUFInfo

TOKENIZER_KEY = "tokenizer.ggml.model"
TOKENS_KEY = "tokenizer.ggml.tokens"


def vocabulary(info: GGUFInfo) -> tuple[str, int] | None:
    """A GGUF's tokenizer kind and token count, or None when it carries no vocabulary."""
    kind = info.metadata.get(TOKENIZER_KEY)
    tokens = info.metadata.get(TOKENS_KEY)
    count = tokens.count if isinstance(tokens, ArraySummary) else (
        len(tokens) if isinstance(tokens, list) else None)
    if not isinstance(kind, str) or not count:
        return None
    return kind, count


def _describe(found: tuple[str, int]) -> str:
    return f"tokenizer {found[0]!r} with {found[1]} tokens"


def check_draft(draft: GGUFInfo, model: GGUFInfo) -> None:
    """Refuse (InvalidModelFileError, a 400) a draft GGUF that is not a model, or whose
    vocabulary is not ``model``'s."""
    if draft.metadata.get("general.type") == "adapter":
        raise InvalidModelFileError("the draft GGUF is an adapter (LoRA), not a model")
    draft_vocabulary = vocabulary(draft)
    if draft_vocabulary is None:
        raise InvalidModelFileError("the draft GGUF has no vocabulary (tokenizer.ggml.tokens)")
    model_vocabulary = vocabulary(model)
    if model_vocabulary != draft_vocabulary:
        has = _describe(model_vocabulary) if model_vocabulary else "no vocabulary"
        raise InvalidModelFileError(
            f"the draft model's vocabulary does not match the model's: the draft has "
            f"{_describe(draft_vocabulary)}, the model has {has}; speculative decoding needs a "
            "draft model with the same tokenizer (a smaller model of the same family)")
