"""Activations rounded the way llama.cpp's CPU backend rounds them before a matmul.

ggml-cpu does not multiply a quantised (or F16) weight by float32 activations: it first converts
the activation rows to the weight type's `vec_dot_type` (ggml-cpu.c, type_traits_cpu) and takes
integer (or F16) dot products. Q8_0, Q4_0, Q5_0, IQ4_NL weights: Q8_0 activations (blocks of 32,
d = amax / 127 stored as F16); Q4_1, Q5_1: Q8_1 (the same quants, plus an F16 sum); K-quants
(Q2_K .. Q6_K): Q8_K (blocks of 256, a float32 d); F16 weights: F16 activations; BF16: BF16.
The engine emulates that by rounding its float32 activations to those values and back, then
multiplying in float32 as before:

    act = activation_type(ggml_type_of_weight)     # e.g. Q8_0 for a Q8_0 weight
    y = round_activations(x, act) @ w.T            # x (T, K): what llama.cpp's kernel sees

Q8_0, Q4_K and Q6_K weights are not dequantised at all (q8weight.Q8Weight, q4kweight.Q4KWeight,
q6kweight.Q6KWeight): their product quantises x with quantize_q8_0 / quantize_q8_k (or their
compiled twins) and takes ggml's integer dot products (kernels.matmul_q8_0, matmul_q4_k,
matmul_q6_k): for Q4_K and Q6_K equal to ggml's vec_dot bit for bit (test_q4kweight.py,
test_q6kweight.py); for Q8_0 the same exact int32 block sums, added up in float32 with one
rounding per block where ggml rounds once per 4-byte lane of each block, so within a few float32
ulps of ggml's result, not its bits (test_q8weight.py). round_activations serves the other types,
and those weights when fused with a part of another type.

tests/engine/test_vecdot.py checks model.linear this way against ggml's own mul_mat (the cached
llama.cpp build): equal up to float32 sums for Q8_0, Q4_0, Q5_0, Q4_K, Q6_K, F16 and BF16 weights.
What stays different: the order of float32 sums; the x86 SIMD Q8_0 quantiser scales by 127 / amax
and rounds halves to even, where this module follows ggml's reference quantize_row_q8_0_ref (as
gguf-py does: x * (1 / d), halves away from zero; they differ only on exact ties); and Q8_1's F16
block sum, which llama.cpp's Q4_1/Q5_1 offset term uses (here the sum of the rounded values). The
repacked kernels (llama-server's default on AVX2) round the same way; its AMX kernels (when the
OS enables AMX) quantise K-quant activations with an F16 d instead (quantize_row_q8_K_vnni), not
emulated. The engine's KV cache and attention are float32, as llama-server's with `-ctk f32
-ctv f32` (flash attention on or off: F32 throughout with an F32 cache).
"""
from __future__ import annotations

import numpy as np

from .quants import GGML_TYPES, QK_K

F32, F16, BF16 = GGML_TYPES["F32"], GGML_TYPES["F16"], GGML_TYPES["BF16"]
Q8_0, Q8_1, Q8_K = GGML_TYPES["Q8_0"], GGML_TYPES["Q8_1"], GGML_TYPES["Q8_K"]
QK8_0 = 32

# weight type -> the type ggml-cpu converts activations to (type_traits_cpu[...].vec_dot_type);
# the engine dequantises only some of these weight types, the table is ggml-cpu's whole.
VEC_DOT_TYPE: dict[int, int] = {
    F32: F32, F16: F16, BF16: BF16,
    **{GGML_TYPES[name]: Q8_0 for name in ("Q1_0", "Q4_0", "Q5_0", "Q8_0", "IQ4_NL", "MXFP4", "NVFP4")},
    **{GGML_TYPES[name]: Q8_1 for name in ("Q4_1", "Q5_1")},
    **{GGML_TYPES[name]: Q8_K for name in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ2_XXS", "IQ2_XS",
                                           "IQ3_XXS", "IQ3_S", "IQ2_S", "IQ1_S", "IQ1_M", "IQ4_XS",
                                           "TQ1_0", "TQ2_0")},
}


def activation_type(weight_type: int) -> int:
    """The activation type llama.cpp multiplies a weight of this ggml type with (F32: none)."""
    return VEC_DOT_TYPE.get(weight_type, F32)


def round_activations(x: np.ndarray, act_type: int) -> np.ndarray:
    """x (T, K) float32 as llama.cpp's kernel for act_type sees it (F32: x itself, not a copy)."""
    if act_type == F32:
        return x
    return _ROUNDERS[act_type](np.asarray(x, dtype=np.float32))


def quantize_q8_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's quantize_row_q8_0_ref over rows of whole blocks: x (..., K) float32 ->
    d (n, 1) float16 and q (n, 32) int8, n = x.size / 32 blocks in row order."""
    blocks = np.asarray(x, dtype=np.float32).reshape(-1, QK8_0)                    # (n, 32)
    d, magnitude = _q8_0_magnitudes(blocks)
    return d.astype(np.float16), np.copysign(magnitude, blocks).astype(np.int8)


def quantize_q8_k(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's quantize_row_q8_K_ref: x (..., K) float32 -> d (n, 1) float32 and q (n, 256) int8
    (the block sums, bsums, are not needed here; kernels.quantize_q8_k is the compiled twin)."""
    blocks = np.asarray(x, dtype=np.float32).reshape(-1, QK_K)                     # (n, 256)
    iscale, q = _q8_k_blocks(blocks)
    d = np.float32(1) / iscale                                                      # (n, 1)
    d[np.abs(blocks).max(axis=1) == 0] = 0
    return d, q.astype(np.int8)


def _q8_0_magnitudes(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 32) float32 -> d (n, 1) float32 (before its F16 rounding) and |q| (n, 32) float32:
    roundf(|x| * (1 / d)), which is |roundf(x * (1 / d))| (the product is sign-symmetric). The
    caller puts the sign back last: one pass fewer than rounding signed values."""
    magnitude = np.abs(blocks)                                                      # (n, 32)
    d = _block_max(magnitude) / np.float32(127)                                     # (n, 1)
    magnitude *= np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    magnitude += _JUST_BELOW_HALF       # roundf of a value >= 0, exactly: floor(v + 0.49999997)
    return d, np.floor(magnitude, out=magnitude)


def _block_max(values: np.ndarray) -> np.ndarray:
    """(n, 32) -> (n, 1) row maxima by five pairwise halvings of the flat array: each is one
    long strided loop, where numpy's max(axis=1) pays per row (5x slower at n = 16k)."""
    flat = values.reshape(-1)                                                       # (n * 32,)
    while flat.size > values.shape[0]:
        flat = np.maximum(flat[0::2], flat[1::2])
    return flat.reshape(-1, 1)


# C's roundf (halves away from zero) of v >= 0 is floor(v + 0.49999997), exactly, for v < 2**22:
# with 0.5 itself, 0.49999997 would round up to 1; a true half still rounds up, as the float32
# sum rounds to the next integer.
_JUST_BELOW_HALF = np.nextafter(np.float32(0.5), np.float32(0))


def _q8_k_blocks(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 256) float32 -> iscale (n, 1) and q (n, 256) float32 integers. The scale comes from
    the signed value of largest magnitude (the first such): iscale = -127 / max (d = 1 / iscale);
    q = nearest_int (halves to even, as np.rint) of iscale * x. ggml then takes min(127, q), a
    no-op: |iscale * x| <= |iscale * max| rounds to at most 127. An all-zero block gets iscale
    -127 here (any finite scale gives q = 0; ggml stores d = 0)."""
    first = np.abs(blocks).argmax(axis=1)[:, None]                                  # (n, 1)
    peak = np.take_along_axis(blocks, first, axis=1)                                # (n, 1) signed
    peak[peak == 0] = 1
    iscale = np.float32(-127) / peak                                                # (n, 1)
    q = blocks * iscale                                                             # (n, 256)
    return iscale, np.rint(q, out=q)


def _round_q8_0(x: np.ndarray) -> np.ndarray:
    blocks = x.reshape(-1, QK8_0)                                                   # (n, 32)
    d, values = _q8_0_magnitudes(blocks)                                            # (n, 1), (n, 32)
    values *= d.astype(np.float16).astype(np.float32)                               # the stored F16 d
    return np.copysign(values, blocks, out=values).reshape(x.shape)


def _round_q8_k(x: np.ndarray) -> np.ndarray:
    iscale, q = _q8_k_blocks(x.reshape(-1, QK_K))                                   # (n, 1), (n, 256)
    q *= np.float32(1) / iscale                                                     # the stored float d
    return q.reshape(x.shape)


def _round_f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def _round_bf16(x: np.ndarray) -> np.ndarray:
    """ggml's fp32 -> bf16: round to nearest even on the top 16 bits (NaN kept NaN)."""
    bits = np.ascontiguousarray(x).view(np.uint32)                                  # (T, K)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))) & np.uint32(0xFFFF0000)
    rounded[np.isnan(x)] = np.uint32(0x7FC00000)
    return rounded.view(np.float32)


_ROUNDERS = {Q8_0: _round_q8_0, Q8_1: _round_q8_0, Q8_K: _round_q8_k, F16: _round_f16, BF16: _round_bf16}
