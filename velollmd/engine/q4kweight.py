"""Q4_K weights kept quantised in memory, multiplied as llama.cpp's CPU backend multiplies them.

    w = Q4KWeight.from_raw(gguf.raw(name), (N, K))    # nibbles + 6-bit scales and mins per 32
    y = w.matmul(x)                                   # x (T, K) float32 -> (T, N)

A float32 copy of a Q4_K weight is 7.1x its bytes. Kept as its nibble bytes, with the packed
scales and mins unpacked to a byte each and d, dmin as float32 (0.59 bytes a value where the
file has 0.5625), a decode step reads ~7x less. The product rounds x to Q8_K blocks
(kernels.quantize_q8_k, vecdot.quantize_q8_k's values) and takes ggml_vec_dot_q4_K_q8_K's
integer sums and float steps (kernels.matmul_q4_k).

ScaleMinWeight holds what Q4_K shares with Q5_K (q5kweight.Q5KWeight): sub-blocks of 32 values
d * sc * q - dmin * mn, q's low 4 bits as the file's nibble bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels
from .quants import split_q4_k
from .quantweight import KQuantWeight


@dataclass(frozen=True)
class ScaleMinWeight(KQuantWeight):
    qs: np.ndarray      # (N, K / 2) uint8: per 256 values, 4 x 32 bytes (sub-blocks 2j low, 2j + 1 high)
    sc: np.ndarray      # (N, K / 32) uint8: each sub-block's 6-bit scale
    mn: np.ndarray      # (N, K / 32) uint8: each sub-block's 6-bit min
    d: np.ndarray       # (N, K / 256) float32: each super-block's F16 d
    dmin: np.ndarray    # (N, K / 256) float32: each super-block's F16 dmin

    @property
    def shape(self) -> tuple[int, int]:
        return self.qs.shape[0], self.qs.shape[1] * 2

    def values(self, index: np.ndarray | slice) -> np.ndarray:
        """The rows' q (R, K / 256, 8, 32) uint8, sub-blocks in order (here the nibbles 0..15)."""
        qs = self.qs[index]                                                   # (R, K / 2)
        packed = qs.reshape(qs.shape[0], -1, 4, 1, 32)                        # (R, nb, 4, 1, 32)
        return np.concatenate([packed & 0x0F, packed >> 4], axis=3).reshape(qs.shape[0], -1, 8, 32)

    def rows(self, index: np.ndarray | slice) -> np.ndarray:
        q = self.values(index).astype(np.float32)                             # (R, nb, 8, 32)
        num_rows, num_blocks = q.shape[:2]
        scale = self.d[index][:, :, None] * self.sc[index].reshape(num_rows, num_blocks, 8).astype(np.float32)
        offset = self.dmin[index][:, :, None] * self.mn[index].reshape(num_rows, num_blocks, 8).astype(np.float32)
        return (scale[..., None] * q - offset[..., None]).reshape(num_rows, -1)


@dataclass(frozen=True)
class Q4KWeight(ScaleMinWeight):
    split = staticmethod(split_q4_k)

    def matmul_quantised(self, x: tuple[np.ndarray, np.ndarray, np.ndarray], path: str = "best") -> np.ndarray:
        """x already Q8_K (kernels.quantize_q8_k's xq, xd, bsums) @ self^T -> (B, N) float32
        (path: one of kernels.q4_k_paths(), for tests)."""
        return kernels.matmul_q4_k(x, self.qs, self.sc, self.mn, self.d, self.dmin, path)
