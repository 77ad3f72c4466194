"""Run as a process (ggml reads its kernel switches once per process): how many positions' logits
differ, bit for bit, between a greedy continuation decoded one token a step and the same tokens
decoded ``--step`` at a time, on a model loaded as a runner with these settings loads it. Where the
settings ask for the same logits at any step and the loaded model's kernels do not give them
(``LlamaModel.steps_sum_alike``), a lone token gets a pad token after it, as the scheduler gives it
(``engine.step_shape``). ``--unpatched`` runs the engine as if built without homeport's patch
(``engine-patches/``).

    python -m tests.support.step_logits MODEL.gguf --speculation true --flash-attention off --step 8

prints one JSON object: {"positions": N, "differ": D, "padded": P}; ``--positions`` sets N (48).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

PROMPT = (Path(__file__).resolve().parents[2] / "src" / "homeport" / "engine"
          / "drafting.py").read_text()[:2400]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--speculation", choices=("true", "false"), required=True)
    parser.add_argument("--flash-attention", choices=("on", "off"), required=True)
    parser.add_argument("--step", type=int, default=8)
    parser.add_argument("--positions", type=int, default=48, help="continuation tokens compared")
    parser.add_argument("--no-pad", action="store_true", help="decode a lone token alone anyway")
    parser.add_argument("--unpatched", action="store_true",
                        help="as an engine without the patch computes")
    args = parser.parse_args()
    from homeport.engine.llama_types import ContextSettings, kernel_environment

    settings = ContextSettings(n_ctx_per_seq=2048, n_seq=1, flash_attention=args.flash_attention,
                               speculation=args.speculation == "true")
    os.environ.update(kernel_environment(settings))  # as the runner's spawn does
    if args.unpatched:
        os.environ["GGML_CPU_STEP_INVARIANT"] = "0"
    from homeport.engine import step_shape
    from homeport.engine.llama import Batch, LlamaModel

    model = LlamaModel(args.gguf, settings)
    batch = Batch(settings.n_batch)
    prompt = model.tokenize(PROMPT)[:1000]
    needs_pads = settings.same_logits_at_any_step and not model.steps_sum_alike

    def decode(tokens: list[int], start: int) -> list[str]:
        """Decode ``tokens`` from ``start`` on, ``len(tokens)`` at most a step of n_batch; the
        digest of each one's logits."""
        batch.clear()
        for offset, token in enumerate(tokens):
            batch.add(token, start + offset, 0, want_logits=True)
        pad = needs_pads and not args.no_pad and len(tokens) < step_shape.MIN_TOKENS
        if pad:
            batch.add(tokens[-1], start + len(tokens), 0, want_logits=False)
        model.decode(batch)
        if pad:
            model.forget(0, start + len(tokens))
        return [hashlib.sha256(model.logits(index).tobytes()).hexdigest()
                for index in range(len(tokens))]

    def evaluate_prompt() -> None:
        model.forget(0)
        for start in range(0, len(prompt), settings.n_batch):
            chunk = prompt[start:start + settings.n_batch]
            batch.clear()
            for offset, token in enumerate(chunk):
                batch.add(token, start + offset, 0, want_logits=offset == len(chunk) - 1)
            model.decode(batch)

    evaluate_prompt()
    continuation = [int(model.logits(batch.n_tokens - 1).argmax())]
    alone: list[str] = []
    for _ in range(args.positions):
        [digest] = decode([continuation[-1]], len(prompt) + len(continuation) - 1)
        alone.append(digest)
        continuation.append(int(model.logits(0).argmax()))

    evaluate_prompt()
    stepped: list[str] = []
    for start in range(0, args.positions, args.step):
        tokens = continuation[start:min(start + args.step, args.positions)]
        stepped += decode(tokens, len(prompt) + start)
    model.close()
    print(json.dumps({"positions": args.positions,
                      "differ": sum(a != b for a, b in zip(alone, stepped, strict=True)),
                      "padded": needs_pads and not args.no_pad}))


if __name__ == "__main__":
    main()
