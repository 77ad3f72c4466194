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
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(self.model))
        self.n_embd = int(llama_cpp.llama_model_n_embd(self.model))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.bos = int(llama_cpp.llama_vocab_bos(self.vocab))
        self.eos = int(llama_cpp.llama_vocab_eos(self.vocab))
        self.ctx = None
        self._embed_ctx = None
