"""Q6_K weights kept quantised in memory, multiplied as llama.cpp's CPU backend multiplies them.

    w = Q6KWeight.from_raw(gguf.raw(name), (N, K))    # 6-bit values as bytes + a scale per 16
    y = w.matmul(x)                                   # x (T, K) float32 -> (T, N)

Unpacked at load to one byte per value (0..63) plus an int8 scale per 16 and d per 256 (1.07
bytes a value where the file has 0.82; a float32 copy is 4): the kernel then reads whole bytes
as the Q8_0 one does. The product rounds x to Q8_K blocks (kernels.quantize_q8_k) and takes
ggml_vec_dot_q6_K_q8_K's integer sums and float steps (kernels.matmul_q6_k).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels
from .quants import split_q6_k
from .quantweight import KQuantWeight


@dataclass(frozen=True)
class Q6KWeight(KQuantWeight):
    q: np.ndarray       # (N, K) uint8: the 6-bit values (0..63; the weight is d * sc * (q - 32)), in order
    sc: np.ndarray      # (N, K / 16) int8: one scale per 16 values
    d: np.ndarray       # (N, K / 256) float32: each super-block's F16 d

    split = staticmethod(split_q6_k)

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape

    def rows(self, index: np.ndarray | slice) -> np.ndarray:
        q = self.q[index]                                                     # (R, K)
        num_rows = q.shape[0]
        scale = self.d[index][:, :, None] * self.sc[index].reshape(num_rows, -1, 16).astype(np.float32)
        values = (q.astype(np.int8) - np.int8(32)).reshape(num_rows, -1, 16, 16).astype(np.float32)
        return (scale[..., None] * values).reshape(num_rows, -1)

    def matmul_quantised(self, x: tuple[np.ndarray, np.ndarray, np.ndarray], path: str = "best") -> np.ndarray:
        """x already Q8_K (kernels.quantize_q8_k's) @ self^T -> (B, N) float32 (path: for tests)."""
        return kernels.matmul_q6_k(x, self.q, self.sc, self.d, path)
