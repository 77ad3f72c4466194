"""Applies homeport's one change to the llama.cpp that llama-cpp-python vendors (``./dev`` runs it
on the unpacked source distribution before building the engine): where the process asks
(``GGML_CPU_STEP_INVARIANT=1``, which ``kernel_environment`` sets for a runner whose answers must
not depend on how a step is made up), ggml's CPU backend computes each token's sums the same way
whatever the number of tokens in its step.

Why: speculation verifies drafted tokens in one step and keeps those the model would have picked
alone, and batching puts several requests' tokens in one step; both are exact only if a token's
logits do not change with the step. Two places change them, and the patch mends both:

- Matrix products: ggml multiplies a matrix by one token's vector with its own dot products and
  by two or more with llamafile's tiles, which sum in another order (but alike for any number of
  tokens). Where asked, the tiles take one-token steps too. On x86 with AVX2, ggml's dot products
  of Q8_0 and Q5_0 weights sum as the tiles do (measured on Gemma 3 270M) and are faster for one
  token (Gemma's 262,144-row Q8_0 output layer: a step took 1.75x as long through the tiles), so
  they keep that path.
- Flash attention: a lone query over 512 or more cells has the cells split across threads (partial
  sums reduced after), and 64 or more queries go in tiles; where asked, every query takes the path
  that computes it alone (ggml's own reference path, ``use_ref``).

The engine exports ``homeport_step_invariant()``: whether both the patch and the request are there
(``engine/llama.py`` reads it).

It also adds a kernel of homeport's own (``homeport_wide_q0.inc``, for x86 with AVX-512 VNNI): Q8_0
and Q5_0 weights times two or more tokens, two tokens to a 512-bit register, the weights read once
for all of them and fetched ahead of use. Each element's sums are the same numbers as in llamafile's
tiles, so it changes no result (the logits are the same to the bit), only the time: measured on
Gemma 3 270M, whose 262,144-row Q8_0 output layer is most of a step of many tokens, a step of 4
tokens took 0.4x as long as with llamafile's kernel, one of 33 tokens 0.6x, a 512-token prompt
1.2x as fast.

And llamafile's own tiles for legacy quants fetch the weights of a later tile ahead (the CPU's
prefetcher does not follow four rows read side by side): the same sums, sooner. Measured on this
CPU with the engine built for AVX2 alone (as on most laptops), Gemma 3 270M: a step of 4 tokens
17 against 32 ms, 33 tokens 134 against 156 ms.

    python engine-patches/apply.py path/to/llama_cpp_python-X.Y.Z
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

CPU = Path("vendor/llama.cpp/ggml/src/ggml-cpu")


def _to_wide_kernel(type_name: str, block: str, return_indent: int) -> tuple[Path, str, str]:
    """The change that sends llamafile's product of ``type_name`` weights to homeport's own kernel
    first (``homeport_wide_q0.inc``), which declines it (false) where it does not take it. The
    indent of the case's ``return false`` differs between the types in llama.cpp's source."""
    case = (f"    case GGML_TYPE_{type_name}: {{\n"
            "        if (Btype != GGML_TYPE_Q8_0)\n"
            f"{' ' * return_indent}return false;\n")
    return (CPU / "llamafile" / "sgemm.cpp", case,
            case + "#if defined(HOMEPORT_WIDE_Q0)\n"
            f"        if (homeport_wide_sgemm<{block}>(params, m, n, k, A, lda, B, ldb, C, ldc))\n"
            "            return true;\n"
            "#endif\n")


# (file, text that must be there once, its replacement)
CHANGES = [
    (CPU / "ops.cpp",
     """\
    // When use_ref is set, force the vec-only reference implementation (no tiling, no KV-chunking)
    const bool use_ref = params->use_ref;
""",
     """\
    // When use_ref is set, force the vec-only reference implementation (no tiling, no KV-chunking)
    // (homeport: also where asked, so that a query's sums do not depend on the step's size)
    const bool use_ref = params->use_ref || homeport_step_invariant();
"""),
    (CPU / "ops.cpp",
     """\
static void ggml_compute_forward_flash_attn_ext_f16(
""",
     """\
// homeport: GGML_CPU_STEP_INVARIANT=1 (read once) asks that a token's sums do not depend on how
// many tokens its step holds (engine-patches/apply.py in homeport).
extern "C" __attribute__((visibility("default"))) bool homeport_step_invariant(void) {
    static const bool asked = [] {
        const char * value = getenv("GGML_CPU_STEP_INVARIANT");
        return value != nullptr && atoi(value) != 0;
    }();
    return asked;
}

static void ggml_compute_forward_flash_attn_ext_f16(
"""),
    (CPU / "llamafile" / "sgemm.cpp",
     """\
    // only enable sgemm for prompt processing
#if !defined(__MMA__)
    if (n < 2)
        return false;
#endif
""",
     """\
    // only enable sgemm for prompt processing (homeport: and one-token steps where asked)
#if !defined(__MMA__)
    if (n < 2 && !one_token_step_here(Atype))
        return false;
#endif
"""),
    (CPU / "llamafile" / "sgemm.cpp",
     """\
/**
 * Performs optimized matrix multiplication on CPU.
""",
     """\
#include "homeport_wide_q0.inc"

extern "C" bool homeport_step_invariant(void);  // ops.cpp

// homeport: whether a one-token step of an ``type`` matrix goes to the tiles below, so that its
// sums are those of a token among several.
static bool one_token_step_here(int type) {
    if (!homeport_step_invariant())
        return false;
#if defined(__AVX2__)
    // ggml's own dot products of these sum as the tiles do, and faster for one token.
    if (type == GGML_TYPE_Q8_0 || type == GGML_TYPE_Q5_0)
        return false;
#endif
    (void) type;
    return true;
}

/**
 * Performs optimized matrix multiplication on CPU.
"""),
    # llamafile's 4-row tiles of legacy quants (its kernel for Q4_0 and IQ4_NL everywhere, and for
    # Q8_0 and Q5_0 where homeport's own kernel is not built: x86 without AVX-512 VNNI) fetch the
    # rows of a later tile ahead; the sums are untouched.
    (CPU / "llamafile" / "sgemm.cpp",
     """\
            __m256 Cv[RN][4] = {};
""",
     """\
            __m256 Cv[RN][4] = {};
            // homeport: the rows a later tile reads, fetched ahead (engine-patches/apply.py)
            const int64_t ahead = std::min<int64_t>(ii + 8, m - 4);
"""),
    (CPU / "llamafile" / "sgemm.cpp",
     """\
                uint64_t a_delta = ((uint64_t)A[lda * (ii + 3) + l].d << 48)""",
     """\
                for (int64_t i = 0; i < 4; ++i)
                    _mm_prefetch((const char *)(A + lda * (ahead + i) + l), _MM_HINT_T0);
                uint64_t a_delta = ((uint64_t)A[lda * (ii + 3) + l].d << 48)"""),
    _to_wide_kernel("Q8_0", "block_q8_0", return_indent=11),
    _to_wide_kernel("Q5_0", "block_q5_0", return_indent=12),
]
# homeport's own kernels, which the changes above include.
OWN_FILES = [(Path(__file__).with_name("homeport_wide_q0.inc"), CPU / "llamafile")]


def patch(source_root: Path) -> None:
    for own, folder in OWN_FILES:
        shutil.copyfile(own, source_root / folder / own.name)
    for relative, before, after in CHANGES:
        path = source_root / relative
        text = path.read_text()
        if after in text:
            continue  # patched already
        if text.count(before) != 1:
            sys.exit(f"{path}: the code this patch changes is not there as expected")
        path.write_text(text.replace(before, after))


if __name__ == "__main__":
    patch(Path(sys.argv[1]))
