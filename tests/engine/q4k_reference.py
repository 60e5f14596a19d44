"""Test helper: matmul_q4k.c's and matmul_q5k.c's arithmetic in numpy (ggml_vec_dot_q4_K_q8_K's
and _q5_K_q8_K's on AVX2, per (input, row)).

    y = reference_matmul_q4_k((xq, xd, bsums), w)      # w a Q4KWeight -> (B, N) float32
    y = reference_matmul_q5_k((xq, xd, bsums), w)      # w a Q5KWeight -> (B, N) float32

Per super-block: 8 int lanes of sub-block scales times 4-value dot products and 4 int lanes of
mins times pair sums of bsums (exact, int64), each added into float32 lanes by an FMA (emulated
in float64: the product is exact, the sum rounded twice, so within 1 ulp of the kernel's single
rounding), then ggml's hsum_float_8 of the 8 lanes plus the 4 mins lanes added pairwise.
"""
from __future__ import annotations

import numpy as np


def unpacked_values(qs: np.ndarray) -> np.ndarray:
    """(N, K / 2) nibble bytes -> (N, K / 256, 8, 32) values 0..15, sub-blocks in order."""
    packed = qs.reshape(qs.shape[0], -1, 4, 1, 32)
    return np.concatenate([packed & 0x0F, packed >> 4], axis=3).reshape(qs.shape[0], -1, 8, 32)


def int_lanes(xq: np.ndarray, w, values: np.ndarray | None = None) -> np.ndarray:
    """xq (B, K) int8, w a Q4KWeight (N, K) -> (B, N, K / 256, 8) int64: lane l of a super-block
    = sum over sub-blocks s of sc[s] * dot(values 32s + 4l .. 32s + 4l + 3). values: w's
    (N, K / 256, 8, 32) when not the nibbles of w.qs (Q5_K's)."""
    batch, k = xq.shape
    values = (unpacked_values(w.qs) if values is None else values).astype(np.int64)  # (N, nb, 8, 32)
    x = xq.reshape(batch, 1, k // 256, 8, 8, 4).astype(np.int64)                 # (B, 1, nb, 8, 8, 4)
    dots = (x * values.reshape(1, *values.shape[:3], 8, 4)).sum(axis=-1)         # (B, N, nb, s, l)
    sc = w.sc.reshape(1, w.qs.shape[0], -1, 8, 1).astype(np.int64)
    return (sc * dots).sum(axis=3)


def int_min_lanes(bsums: np.ndarray, w) -> np.ndarray:
    """bsums (B, K / 16) int16, w a Q4KWeight (N, K) -> (B, N, K / 256, 4) int64: lane m = the
    mins 2m, 2m + 1 times the pair sums of bsums 4m .. 4m + 3."""
    batch, n = bsums.shape[0], w.qs.shape[0]
    pairs = bsums.reshape(batch, 1, -1, 8, 2).astype(np.int64).sum(axis=-1)      # (B, 1, nb, 8)
    mins = w.mn.reshape(1, n, -1, 4, 2).astype(np.int64) * pairs.reshape(batch, 1, -1, 4, 2)
    return mins.sum(axis=-1)


def fma_lanes(scale: np.ndarray, lanes: np.ndarray) -> np.ndarray:
    """scale (B, N, nb) float32, lanes (B, N, nb, L) int64 -> (B, N, L) float32: per super-block
    acc = fma(scale, float32(lane), acc), the FMA in float64 (exact product) then float32."""
    acc = np.zeros((*lanes.shape[:2], lanes.shape[3]), dtype=np.float32)
    for i in range(lanes.shape[2]):
        lane = lanes[:, :, i].astype(np.float32).astype(np.float64)
        acc = (scale[:, :, i, None].astype(np.float64) * lane + acc).astype(np.float32)
    return acc


def hsum_float_8(acc: np.ndarray) -> np.ndarray:
    """ggml's hsum_float_8 of (..., 8) float32 lanes."""
    a = acc[..., :4] + acc[..., 4:]
    return (a[..., 0] + a[..., 2]) + (a[..., 1] + a[..., 3])


def reference_matmul_q4_k(x: tuple[np.ndarray, np.ndarray, np.ndarray], w) -> np.ndarray:
    xq, xd, bsums = x
    d = xd[:, None, :] * w.d[None, :, :]                                         # (B, N, nb) float32
    dmin = -xd[:, None, :] * w.dmin[None, :, :]
    acc = fma_lanes(d, int_lanes(xq, w))                                         # (B, N, 8)
    acc_m = fma_lanes(dmin, int_min_lanes(bsums, w))                             # (B, N, 4)
    m = (acc_m[..., 0] + acc_m[..., 2]) + (acc_m[..., 1] + acc_m[..., 3])
    return hsum_float_8(acc) + m


def values_5bit(w) -> np.ndarray:
    """w a Q5KWeight -> (N, K / 256, 8, 32) values 0..31 from its bytes, independently of
    Q5KWeight.values."""
    n = w.qs.shape[0]
    qh = w.qh.reshape(n, -1, 32)                                                  # (N, nb, 32)
    high = np.stack([(qh >> s) & 1 for s in range(8)], axis=2)                    # (N, nb, 8, 32)
    return unpacked_values(w.qs) + 16 * high


def reference_matmul_q5_k(x: tuple[np.ndarray, np.ndarray, np.ndarray], w) -> np.ndarray:
    """ggml_vec_dot_q5_K_q8_K on AVX2: Q4_K's 8 scale lanes on the 5-bit values, the 4 mins
    lanes summed as int, summs = fma(dmin, that sum, summs), then hsum_float_8(acc) + summs."""
    xq, xd, bsums = x
    d = xd[:, None, :] * w.d[None, :, :]                                          # (B, N, nb) float32
    dmin = -xd[:, None, :] * w.dmin[None, :, :]
    acc = fma_lanes(d, int_lanes(xq, w, values_5bit(w)))                          # (B, N, 8)
    mins = int_min_lanes(bsums, w)                                                # (B, N, nb, 4)
    pairs = (mins[..., 0] + mins[..., 1]) + (mins[..., 2] + mins[..., 3])         # (B, N, nb)
    summs = fma_lanes(dmin, pairs[..., None])[..., 0]                             # (B, N)
    return hsum_float_8(acc) + summs
