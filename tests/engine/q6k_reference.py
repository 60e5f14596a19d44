"""Test helper: matmul_q6k.c's arithmetic in numpy (ggml_vec_dot_q6_K_q8_K's on AVX2, per
(input, row)).

    y = reference_matmul_q6_k((xq, xd, bsums), w)      # w a Q6KWeight -> (B, N) float32
"""
from __future__ import annotations

import numpy as np

from tests.engine.q4k_reference import fma_lanes, hsum_float_8


def reference_matmul_q6_k(x: tuple[np.ndarray, np.ndarray, np.ndarray], w) -> np.ndarray:
    """Per super-block 8 int lanes (lane l: sum over chunks k of sc[2k + l / 4] times the dot of
    values 32k + 4l .. + 3, minus 32 * (sc[2l] * bsums[2l] + sc[2l + 1] * bsums[2l + 1])),
    acc = fma(d, lane, acc) in float64 then float32, hsum_float_8."""
    xq, xd, bsums = x
    batch, k = xq.shape
    n = w.q.shape[0]
    dots = (xq.reshape(batch, 1, k // 256, 8, 2, 4, 4).astype(np.int64)
            * w.q.reshape(1, n, k // 256, 8, 2, 4, 4).astype(np.int64)).sum(axis=-1)  # (B, N, nb, 8, 2, 4)
    scales = w.sc.reshape(1, n, k // 256, 8, 2, 1).astype(np.int64)
    lanes = (scales * dots).sum(axis=3).reshape(batch, n, k // 256, 8)            # lane = half * 4 + l
    offset = (w.sc.reshape(1, n, k // 256, 8, 2).astype(np.int64)
              * bsums.reshape(batch, 1, k // 256, 8, 2).astype(np.int64)).sum(axis=-1)  # (B, N, nb, 8)
    d = xd[:, None, :] * w.d[None, :, :]                                           # (B, N, nb)
    return hsum_float_8(fma_lanes(d, lanes - 32 * offset))
