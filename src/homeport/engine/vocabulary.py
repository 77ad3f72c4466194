"""A model's tokenizer alone, for the server while the model itself runs in a runner process."""

from __future__ import annotations

from pathlib import Path

import llama_cpp

from homeport.engine.llama import EngineError, LlamaModel, _init_backend


class Vocabulary(LlamaModel):
    """A model file loaded vocabulary-only (llama.cpp's ``vocab_only``): no weights and no
    context, just what ``LlamaModel``'s text methods need (tokenize, token_bytes, special_text,
    detokenize, bos, eos). Decoding with it is an error: that is the runner's job."""

    def __init__(self, path: Path) -> None:  # LlamaModel.__init__ would load the weights
        _init_backend()
        self.path = path
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise EngineError("llama.cpp could not read the model's vocabulary")
        self._read_vocabulary()
        self.ctx = None
        self._embed_ctx = None
