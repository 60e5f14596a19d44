"""Test helper: matmul_q4k.c's arithmetic in numpy (ggml_vec_dot_q4_K_q8_K's on AVX2, per
(input, row)).

    y = reference_matmul_q4_k((xq, xd, bsums), w)      # w a Q4KWeight -> (B, N) float32

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


def int_lanes(xq: np.ndarray, w) -> np.ndarray:
    """xq (B, K) int8, w a Q4KWeight (N, K) -> (B, N, K / 256, 8) int64: lane l of a super-block
    = sum over sub-blocks s of sc[s] * dot(values 32s + 4l .. 32s + 4l + 3)."""
    batch, k = xq.shape
    values = unpacked_values(w.qs).astype(np.int64)                              # (N, nb, 8, 32)
    x = xq.reshape(batch, 1, k // 256, 8, 8, 4).astype(np.int64)                 # (B, 1, nb, 8, 8, 4)
    dots = (x * values.reshape(1, *values.shape[:3], 8, 4)).sum(axis=-1)         # (B, N, nb, s, l)
    sc = w.sc.reshape(1, w.qs.shape[0], -1, 8, 1).astype(np.int64)
    return (sc * dots).sum(axis=3)


def reference_matmul_q4_k(x: tuple[np.ndarray, np.ndarray, np.ndarray], w) -> np.ndarray:
    xq, xd, bsums = x
    batch, n = xq.shape[0], w.qs.shape[0]
    lanes = int_lanes(xq, w)                                                     # (B, N, nb, 8)
    pairs = bsums.reshape(batch, 1, -1, 8, 2).astype(np.int64).sum(axis=-1)      # (B, 1, nb, 8)
    mins = w.mn.reshape(1, n, -1, 4, 2).astype(np.int64) * pairs.reshape(batch, 1, -1, 4, 2)
    min_lanes = mins.sum(axis=-1)                                                # (B, N, nb, 4)
    d = xd[:, None, :] * w.d[None, :, :]                                         # (B, N, nb) float32
    dmin = -xd[:, None, :] * w.dmin[None, :, :]
    acc = np.zeros((batch, n, 8), dtype=np.float32)
    acc_m = np.zeros((batch, n, 4), dtype=np.float32)
    for i in range(lanes.shape[2]):
        lane = lanes[:, :, i].astype(np.float32).astype(np.float64)
        acc = (d[:, :, i, None].astype(np.float64) * lane + acc).astype(np.float32)
        lane = min_lanes[:, :, i].astype(np.float32).astype(np.float64)
        acc_m = (dmin[:, :, i, None].astype(np.float64) * lane + acc_m).astype(np.float32)
    a = acc[..., :4] + acc[..., 4:]                                              # (B, N, 4)
    m = (acc_m[..., 0] + acc_m[..., 2]) + (acc_m[..., 1] + acc_m[..., 3])
    return ((a[..., 0] + a[..., 2]) + (a[..., 1] + a[..., 3])) + m
