"""Q4_0 and Q5_0 weights kept quantised in memory, multiplied as llama.cpp's CPU backend
multiplies them.

    w = Q40Weight.from_raw(gguf.raw(name), (N, K))    # nibbles + one scale per 32
    w = Q50Weight.from_raw(gguf.raw(name), (N, K))    # nibbles + fifth bits + one scale per 32
    y = w.matmul(x)                                   # x (T, K) float32 -> (T, N)
    rows = w.rows(token_ids)                          # dequantised rows (embedding lookup)

A float32 copy of a Q4_0 weight (Ollama's default for many models) is 7.1x its bytes, of a Q5_0
weight (llama.cpp's fallback in Q4_K_M files for rows that are not whole 256-blocks) 5.8x. Kept
as the nibble bytes (and Q5_0's 4 bytes of fifth bits per block) with d as float32, 0.625 and
0.75 bytes a value (the files 0.5625 and 0.6875), a decode step reads ~6x / ~5x less. ggml's
vec_dot_type for both is Q8_0: the product rounds x as for a Q8_0 weight
(q8weight.quantize_rows) and takes ggml_vec_dot_q4_0_q8_0's / ggml_vec_dot_q5_0_q8_0's integer
lanes and float steps (kernels.matmul_q4_0, matmul_q5_0), so these parts stack with Q8_0 parts
on one rounding of x.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels, vecdot
from .q8weight import quantize_rows
from .quants import GGML_TYPES, _f16, _matrix_blocks
from .quantweight import QuantWeight

QK = 32             # values per block
Q4_0_OFFSET = 8     # a Q4_0 weight is d * (nibble - 8)
Q5_0_OFFSET = 16    # a Q5_0 weight is d * (nibble + 16 * bit - 16)


def split_q4_0(raw: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A Q4_0 matrix's bytes, kept quantised: qs (N, K / 2) uint8 (each block's 16 nibble bytes
    as stored) and d (N, K / 32) float32 (the F16 scales); d * (nibble - 8) is dequantize's value."""
    rows, cols = (int(n) for n in shape)
    blocks = _matrix_blocks(raw, GGML_TYPES["Q4_0"], rows, cols)                  # (n, 18)
    qs = np.ascontiguousarray(blocks[:, 2:]).reshape(rows, cols // 2)             # (N, K / 2)
    return qs, _f16(blocks[:, :2]).reshape(rows, cols // QK)


def split_q5_0(raw: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Q5_0 matrix's bytes, kept quantised: qs (N, K / 2) uint8 (each block's 16 nibble bytes),
    qh (N, K / 8) uint8 (each block's 4 bytes of fifth bits), d (N, K / 32) float32 (the F16
    scales); d * (nibble + 16 * bit - 16) is dequantize's value."""
    rows, cols = (int(n) for n in shape)
    blocks = _matrix_blocks(raw, GGML_TYPES["Q5_0"], rows, cols)                  # (n, 22)
    qs = np.ascontiguousarray(blocks[:, 6:]).reshape(rows, cols // 2)             # (N, K / 2)
    qh = np.ascontiguousarray(blocks[:, 2:6]).reshape(rows, cols // 8)            # (N, K / 8)
    return qs, qh, _f16(blocks[:, :2]).reshape(rows, cols // QK)


def nibble_values(qs: np.ndarray) -> np.ndarray:
    """qs (R, K / 2) uint8 -> the nibbles (R, K / 32, 32) uint8 in x's order: per block the 16
    low nibbles, then the 16 high ones."""
    packed = qs.reshape(qs.shape[0], -1, 1, QK // 2)                              # (R, nb, 1, 16)
    return np.concatenate([packed & 0x0F, packed >> 4], axis=2).reshape(qs.shape[0], -1, QK)


def fifth_bits(qh: np.ndarray) -> np.ndarray:
    """qh (R, K / 8) uint8 -> (R, K / 32, 32) uint8 0/1: bit i of each block's little-endian uint32."""
    return np.unpackbits(qh.reshape(qh.shape[0], -1, 4), axis=-1, bitorder="little")


@dataclass(frozen=True)
class LegacyWeight(QuantWeight):
    """What Q40Weight and Q50Weight share: fields qs (N, K / 2) and d (N, K / 32) first, Q8_0
    inputs, and the product of the compiled kernel for the type (_kernel)."""
    act_type = vecdot.Q8_0

    @property
    def shape(self) -> tuple[int, int]:
        return self.qs.shape[0], self.qs.shape[1] * 2

    def values(self, index: np.ndarray | slice) -> np.ndarray:
        """The weights' integer values (R, K / 32, 32) int8 of rows index, in x's order."""
        raise NotImplementedError

    def rows(self, index: np.ndarray | slice) -> np.ndarray:
        values = self.values(index).astype(np.float32)                           # (R, K / 32, 32)
        return (self.d[index][:, :, None] * values).reshape(values.shape[0], -1)

    def quantize_input(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return quantize_rows(x)


@dataclass(frozen=True)
class Q40Weight(LegacyWeight):
    qs: np.ndarray      # (N, K / 2) uint8: per 32 values 16 bytes, value i low nibble of byte i, 16 + i high
    d: np.ndarray       # (N, K / 32) float32: each block's F16 scale

    split = staticmethod(split_q4_0)

    def values(self, index: np.ndarray | slice) -> np.ndarray:
        return nibble_values(self.qs[index]).astype(np.int8) - np.int8(Q4_0_OFFSET)

    def matmul_quantised(self, x: tuple[np.ndarray, np.ndarray], path: str = "best") -> np.ndarray:
        """x already Q8_0 (quantize_rows' xq, xd) @ self^T -> (B, N) float32 (path: one of
        kernels.q8_0_paths(), for tests)."""
        return kernels.matmul_q4_0(*x, self.qs, self.d, path)


@dataclass(frozen=True)
class Q50Weight(LegacyWeight):
    qs: np.ndarray      # (N, K / 2) uint8: as Q40Weight's
    qh: np.ndarray      # (N, K / 8) uint8: per 32 values 4 bytes, bit i of their uint32 = bit 4 of value i
    d: np.ndarray       # (N, K / 32) float32: each block's F16 scale

    split = staticmethod(split_q5_0)

    def values(self, index: np.ndarray | slice) -> np.ndarray:
        unsigned = nibble_values(self.qs[index]) | (fifth_bits(self.qh[index]) << 4)   # (R, nb, 32)
        return unsigned.astype(np.int8) - np.int8(Q5_0_OFFSET)

    def matmul_quantised(self, x: tuple[np.ndarray, np.ndarray], path: str = "best") -> np.ndarray:
        """As Q40Weight's."""
        return kernels.matmul_q5_0(*x, self.qs, self.qh, self.d, path)
