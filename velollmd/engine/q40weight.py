"""Q4_0 weights kept quantised in memory, multiplied as llama.cpp's CPU backend multiplies them.

    w = Q40Weight.from_raw(gguf.raw(name), (N, K))    # nibbles + one scale per 32
    y = w.matmul(x)                                   # x (T, K) float32 -> (T, N)
    rows = w.rows(token_ids)                          # dequantised rows (embedding lookup)

A float32 copy of a Q4_0 weight (Ollama's default for many models) is 7.1x its bytes. Kept as
its nibble bytes with d as float32 (0.625 bytes a value, the file 0.5625), a decode step reads
~6x less. ggml's vec_dot_type for Q4_0 is Q8_0: the product rounds x as for a Q8_0 weight
(q8weight.quantize_rows) and takes ggml_vec_dot_q4_0_q8_0's integer lanes and float steps
(kernels.matmul_q4_0), so a Q4_0 part stacks with Q8_0 parts on one rounding of x.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels, vecdot
from .q8weight import quantize_rows
from .quants import GGML_TYPES, _f16, _matrix_blocks
from .quantweight import QuantWeight

QK4_0 = 32
Q4_0_OFFSET = 8     # a weight is d * (nibble - 8)


def split_q4_0(raw: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A Q4_0 matrix's bytes, kept quantised: qs (N, K / 2) uint8 (each block's 16 nibble bytes
    as stored) and d (N, K / 32) float32 (the F16 scales); d * (nibble - 8) is dequantize's value."""
    rows, cols = (int(n) for n in shape)
    blocks = _matrix_blocks(raw, GGML_TYPES["Q4_0"], rows, cols)                  # (n, 18)
    qs = np.ascontiguousarray(blocks[:, 2:]).reshape(rows, cols // 2)             # (N, K / 2)
    return qs, _f16(blocks[:, :2]).reshape(rows, cols // QK4_0)


def unpacked_values(qs: np.ndarray) -> np.ndarray:
    """qs (R, K / 2) uint8 -> the weights' integer values (R, K) int8 (nibble - 8) in x's order:
    per block the 16 low nibbles, then the 16 high ones."""
    packed = qs.reshape(qs.shape[0], -1, 1, QK4_0 // 2)                           # (R, nb, 1, 16)
    nibbles = np.concatenate([packed & 0x0F, packed >> 4], axis=2)               # (R, nb, 2, 16)
    return (nibbles.astype(np.int8) - np.int8(Q4_0_OFFSET)).reshape(qs.shape[0], -1)


@dataclass(frozen=True)
class Q40Weight(QuantWeight):
    qs: np.ndarray      # (N, K / 2) uint8: per 32 values 16 bytes, value i low nibble of byte i, 16 + i high
    d: np.ndarray       # (N, K / 32) float32: each block's F16 scale

    act_type = vecdot.Q8_0
    split = staticmethod(split_q4_0)

    @property
    def shape(self) -> tuple[int, int]:
        return self.qs.shape[0], self.qs.shape[1] * 2

    def rows(self, index: np.ndarray | slice) -> np.ndarray:
        q, d = unpacked_values(self.qs[index]), self.d[index]                    # (R, K), (R, K / 32)
        values = q.reshape(q.shape[0], -1, QK4_0).astype(np.float32)             # (R, K / 32, 32)
        return (d[:, :, None] * values).reshape(q.shape)

    def quantize_input(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return quantize_rows(x)

    def matmul_quantised(self, x: tuple[np.ndarray, np.ndarray], path: str = "best") -> np.ndarray:
        """x already Q8_0 (quantize_rows' xq, xd) @ self^T -> (B, N) float32 (path: one of
        kernels.q8_0_paths(), for tests)."""
        xq, xd = x
        return kernels.matmul_q4_0(xq, xd, self.qs, self.d, path)
