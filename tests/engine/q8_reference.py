"""Test helper: matmul_q8.c's arithmetic in numpy (ggml_vec_dot_q8_0_q8_0's, per (input, row)).

    lanes = int_lanes(xq, wq)                      # (B, N, K / 32, 8) int32, exact
    y = reference_matmul_q8_0(xq, xd, wq, wd)      # (B, N) float32

Per block j: 8 int32 lane sums (lane l: bytes 4l..4l+3), acc = fma(wd * xd, lane, acc) per lane
(emulated in float64: the product is exact, the sum rounded twice, so within 1 ulp of the
kernel's single rounding; exact whenever the float arithmetic is), then ggml's hsum_float_8.
"""
from __future__ import annotations

import numpy as np


def int_lanes(xq: np.ndarray, wq: np.ndarray) -> np.ndarray:
    """xq (B, K), wq (N, K) int8 -> (B, N, K / 32, 8) int32 lane sums of each block pair."""
    batch, k = xq.shape
    x = xq.reshape(batch, 1, k // 32, 8, 4).astype(np.int32)
    w = wq.reshape(1, wq.shape[0], k // 32, 8, 4).astype(np.int32)
    return (x * w).sum(axis=-1, dtype=np.int32)


def reference_matmul_q8_0(xq: np.ndarray, xd: np.ndarray, wq: np.ndarray, wd: np.ndarray) -> np.ndarray:
    lanes = int_lanes(xq, wq).astype(np.float32)                                 # (B, N, nb, 8)
    d = wd[None, :, :] * xd[:, None, :]                                          # (B, N, nb) float32
    acc = np.zeros(lanes.shape[:2] + (8,), dtype=np.float32)                     # (B, N, 8)
    for j in range(lanes.shape[2]):
        exact = d[:, :, j, None].astype(np.float64) * lanes[:, :, j] + acc
        acc = exact.astype(np.float32)
    a = acc[..., :4] + acc[..., 4:]                                              # (B, N, 4)
    return (a[..., 0] + a[..., 2]) + (a[..., 1] + a[..., 3])
