"""Test helper: matmul_legacy.c's arithmetic in numpy (ggml's vec_dot for Q4_0, Q5_0, Q4_1 and
Q5_1 on AVX2, per (input, row)).

    y = reference_matmul_legacy(x, w)      # x w.quantize_input's, w a LegacyWeight -> (B, N) float32
"""
from __future__ import annotations

import numpy as np

from tests.engine.q4k_reference import fma_lanes, hsum_float_8
from velollmd.engine.legacyweight import LegacyMinWeight, LegacyWeight


def reference_matmul_legacy(x: tuple[np.ndarray, ...], w: LegacyWeight) -> np.ndarray:
    """Per block j, 8 exact int32 lanes (lane l: values 4l..4l+3 of integer * x), acc = fma(wd *
    xd, lane, acc) per lane; then hsum_float_8 of acc, plus (Q4_1, Q5_1) the min term summs =
    fma(m, s, summs) per block (x[2]: s, each input block's d * sum)."""
    xq, xd = x[0], x[1]
    batch, k = xq.shape
    n = w.shape[0]
    values = w.values(slice(None)).reshape(1, n, k // 32, 8, 4).astype(np.int32)
    lanes = (xq.reshape(batch, 1, k // 32, 8, 4).astype(np.int32) * values).sum(axis=-1)  # (B, N, nb, 8)
    d = w.d[None, :, :] * xd[:, None, :]                                          # (B, N, nb) float32
    y = hsum_float_8(fma_lanes(d, lanes))                                         # (B, N)
    if not isinstance(w, LegacyMinWeight):
        return y
    sums = np.broadcast_to(x[2][:, None, :], d.shape)                             # (B, N, nb)
    mins = np.broadcast_to(w.m[None, :, :, None], (*d.shape, 1))                  # (B, N, nb, 1)
    return y + fma_lanes(sums, mins)[..., 0]
