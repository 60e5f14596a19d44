"""Test helper: matmul_q8.c's arithmetic in numpy, per (input, row), on unpacked rows.

    sums = block_sums(xq, wq)                      # (B, N, K / 32) int64, exact
    y = reference_matmul_q8_0(xq, xd, wq, wd)      # (B, N) float32

Per block j in order: the exact int32 sum s_j of its 32 products, then acc = fma(wd * xd, s_j,
acc) in one float32 accumulator (emulated in float64: the product is exact, the sum rounded
twice, so within 1 ulp of the kernel's single rounding; exact whenever the float arithmetic is).
ggml rounds once per 4-byte lane of each block instead and adds 8 lanes at the end, so its
result differs from this in the last bits (test_q8weight compares with a tolerance).
"""
from __future__ import annotations

import numpy as np


def block_sums(xq: np.ndarray, wq: np.ndarray) -> np.ndarray:
    """xq (B, K), wq (N, K) int8 -> (B, N, K / 32) int64: the exact dot product of each block pair."""
    batch, k = xq.shape
    x = xq.reshape(batch, 1, k // 32, 32).astype(np.int64)
    w = wq.reshape(1, wq.shape[0], k // 32, 32).astype(np.int64)
    return (x * w).sum(axis=-1)


def reference_matmul_q8_0(xq: np.ndarray, xd: np.ndarray, wq: np.ndarray, wd: np.ndarray) -> np.ndarray:
    sums = block_sums(xq, wq).astype(np.float64)                                 # (B, N, nb)
    d = (wd[None, :, :] * xd[:, None, :]).astype(np.float64)                     # (B, N, nb) float32 values
    acc = np.zeros(sums.shape[:2], dtype=np.float32)                             # (B, N)
    for j in range(sums.shape[2]):
        acc = (d[:, :, j] * sums[:, :, j] + acc).astype(np.float32)
    return acc
