"""Q8_0 weights kept quantised in memory, multiplied as llama.cpp's CPU backend multiplies them.

    w = Q8Weight.from_raw(gguf.raw(name), (N, K))     # int8 values + one scale per 32
    w = Q8Weight.concat([wq, wk, wv])                  # a fused weight (all parts Q8_0)
    y = w.matmul(x)                                    # x (T, K) float32 -> (T, N)
    rows = w.rows(token_ids)                           # dequantised rows (embedding lookup)

A float32 copy of a Q8_0 weight is 3.8x its bytes, and a decode step reads every weight once:
keeping the int8 values makes the step read ~1.1 bytes per weight instead of 4. The product
rounds x to Q8_0 blocks (vecdot.quantize_q8_0, as ggml-cpu converts activations to a Q8_0
weight's vec_dot_type) and sums each block's exact int32 products, then scales them in float
(kernels.matmul_q8_0: ggml_vec_dot_q8_0_q8_0's arithmetic). Without the compiled extension:
the same rounded x times the dequantised weight, in float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels, vecdot
from .quants import split_q8_0
from .quantweight import QuantWeight

QK8_0 = vecdot.QK8_0


@dataclass(frozen=True)
class Q8Weight(QuantWeight):
    q: np.ndarray       # (N, K) int8, C-contiguous
    d: np.ndarray       # (N, K / 32) float32: each block's F16 scale

    act_type = vecdot.Q8_0
    split = staticmethod(split_q8_0)

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape

    def rows(self, index: np.ndarray | slice) -> np.ndarray:
        q, d = self.q[index], self.d[index]                                   # (R, K), (R, K / 32)
        values = q.reshape(q.shape[0], -1, QK8_0).astype(np.float32)          # (R, K / 32, 32)
        values *= d[:, :, None]
        return values.reshape(q.shape)

    def quantize_input(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return quantize_rows(x)

    def matmul_quantised(self, x: tuple[np.ndarray, np.ndarray], path: str = "best") -> np.ndarray:
        xq, xd = x
        return kernels.matmul_q8_0(xq, xd, self.q, self.d, path)


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (T, K) float32 -> its Q8_0 values xq (T, K) int8 and scales xd (T, K / 32) float32
    (the compiled twin of vecdot.quantize_q8_0 when there is one: the same bits)."""
    if kernels.COMPILED:
        return kernels.quantize_q8_0(x)
    d, q = vecdot.quantize_q8_0(x)                                   # (n, 1) float16, (n, 32) int8
    return q.reshape(x.shape), d.astype(np.float32).reshape(x.shape[0], -1)
