"""Q5_K weights kept quantised in memory, multiplied as llama.cpp's CPU backend multiplies them.

    w = Q5KWeight.from_raw(gguf.raw(name), (N, K))    # Q4_K's fields + the 5th bits as stored
    y = w.matmul(x)                                   # x (T, K) float32 -> (T, N)

Q5_K is Q4_K with a 5th bit per value (32 bytes per 256 values, bit s of byte i for value i of
sub-block s): kept as the nibble bytes and those bytes as stored, scales and mins unpacked to a
byte each, d and dmin float32 (0.72 bytes a value where the file has 0.6875; a float32 copy is
4). The product rounds x to Q8_K blocks (kernels.quantize_q8_k) and takes ggml_vec_dot_q5_K_q8_K's
integer sums and float steps (kernels.matmul_q5_k: Q4_K's tiles with the 5th bit, and the mins
summed as ggml sums them for Q5_K).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels
from .q4kweight import ScaleMinWeight
from .quants import split_q5_k


@dataclass(frozen=True)
class Q5KWeight(ScaleMinWeight):
    qh: np.ndarray      # (N, K / 8) uint8: per 256 values 32 bytes, bit s of byte i: value i of sub-block s

    split = staticmethod(split_q5_k)

    def values(self, index: np.ndarray | slice) -> np.ndarray:
        """The rows' q (R, K / 256, 8, 32) uint8, 0..31: the nibbles + 16 * the 5th bit."""
        qh = self.qh[index]                                                   # (R, K / 8)
        bits = np.arange(8, dtype=np.uint8)[None, None, :, None]              # sub-block s: bit s
        high = (qh.reshape(qh.shape[0], -1, 1, 32) >> bits) & 1               # (R, nb, 8, 32)
        return super().values(index) | (high << 4)

    def matmul_quantised(self, x: tuple[np.ndarray, ...], path: str = "best") -> np.ndarray:
        """x already Q8_K (kernels.quantize_q8_k's) @ self^T -> (B, N) float32 (path: one of
        kernels.q4_k_paths(), for tests)."""
        return kernels.matmul_q5_k(x, self.qs, self.qh, self.sc, self.mn, self.d, self.dmin, path)
