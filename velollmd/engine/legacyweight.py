"""Q4_0, Q5_0, Q4_1 and Q5_1 weights kept quantised in memory, multiplied as llama.cpp's CPU
backend multiplies them.

    w = Q40Weight.from_raw(gguf.raw(name), (N, K))    # nibbles + one scale per 32
    w = Q50Weight.from_raw(gguf.raw(name), (N, K))    # nibbles + fifth bits + one scale per 32
    w = Q41Weight.from_raw(...); Q51Weight.from_raw(...)   # the same + one min per 32
    y = w.matmul(x)                                   # x (T, K) float32 -> (T, N)
    rows = w.rows(token_ids)                          # dequantised rows (embedding lookup)

A float32 copy of a Q4_0 weight (Ollama's default for many models) is 7.1x its bytes, of a Q5_0
weight (llama.cpp's fallback in Q4_K_M files for rows that are not whole 256-blocks) 5.8x. Kept
as the nibble bytes (and Q5_0's 4 bytes of fifth bits per block) with d as float32, 0.625 and
0.75 bytes a value (the files 0.5625 and 0.6875), a decode step reads ~6x / ~5x less. ggml's
vec_dot_type for both is Q8_0: the product rounds x as for a Q8_0 weight
(q8weight.quantize_rows) and takes ggml_vec_dot_q4_0_q8_0's / ggml_vec_dot_q5_0_q8_0's integer
lanes and float steps (kernels.matmul_q4_0, matmul_q5_0), so these parts stack with Q8_0 parts
on one rounding of x. Q4_1 and Q5_1 (rarer; a min per block too) take Q8_1 inputs: the same
values plus each block's F16 d * sum (quantize_rows_q8_1), for ggml's min term.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels, vecdot
from .q8weight import quantize_rows
from .quants import five_bit_values, nibble_values, split_q4_0, split_q4_1, split_q5_0, split_q5_1
from .quantweight import QuantWeight

QK = 32             # values per block
Q4_0_OFFSET = 8     # a Q4_0 weight is d * (nibble - 8); Q4_1: d * nibble + m
Q5_0_OFFSET = 16    # a Q5_0 weight is d * (nibble + 16 * bit - 16); Q5_1: d * (nibble + 16 * bit) + m


def quantize_rows_q8_1(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (T, K) float32 -> Q8_1: quantize_rows' xq (T, K) int8 and xd (T, K / 32) float32, and xs
    (T, K / 32) float32 each block's F16 (amax / 127) * sum(xq), as ggml's quantize_row_q8_1
    (its d before the F16 rounding)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    xq, xd = quantize_rows(x)
    amax = np.abs(x.reshape(x.shape[0], -1, QK)).max(axis=-1)                     # (T, K / 32)
    sums = xq.reshape(x.shape[0], -1, QK).sum(axis=-1, dtype=np.int32).astype(np.float32)
    return xq, xd, (sums * (amax / np.float32(127))).astype(np.float16).astype(np.float32)


@dataclass(frozen=True)
class LegacyWeight(QuantWeight):
    """What the four types share: fields qs (N, K / 2) and d (N, K / 32), Q8_0 inputs (Q8_1 for
    LegacyMinWeight), values (the weights' integers) and the rows they make."""
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
        return five_bit_values(self.qs[index], self.qh[index]).astype(np.int8) - np.int8(Q5_0_OFFSET)

    def matmul_quantised(self, x: tuple[np.ndarray, np.ndarray], path: str = "best") -> np.ndarray:
        """As Q40Weight's."""
        return kernels.matmul_q5_0(*x, self.qs, self.qh, self.d, path)


@dataclass(frozen=True)
class LegacyMinWeight(LegacyWeight):
    """Q4_1 and Q5_1: a field m (N, K / 32) too (each block's min, added to its scaled values),
    and Q8_1 inputs for ggml's min term."""
    act_type = vecdot.Q8_1

    def rows(self, index: np.ndarray | slice) -> np.ndarray:
        values = self.values(index).astype(np.float32)                           # (R, K / 32, 32)
        scaled = self.d[index][:, :, None] * values + self.m[index][:, :, None]
        return scaled.reshape(values.shape[0], -1)

    def quantize_input(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return quantize_rows_q8_1(x)


@dataclass(frozen=True)
class Q41Weight(LegacyMinWeight):
    qs: np.ndarray      # (N, K / 2) uint8: as Q40Weight's
    d: np.ndarray       # (N, K / 32) float32: each block's F16 scale
    m: np.ndarray       # (N, K / 32) float32: each block's F16 min

    split = staticmethod(split_q4_1)

    def values(self, index: np.ndarray | slice) -> np.ndarray:
        return nibble_values(self.qs[index]).astype(np.int8)

    def matmul_quantised(self, x: tuple[np.ndarray, ...], path: str = "best") -> np.ndarray:
        """x already Q8_1 (quantize_rows_q8_1's xq, xd, xs) @ self^T -> (B, N) float32."""
        return kernels.matmul_q4_1(*x, self.qs, self.d, self.m, path)


@dataclass(frozen=True)
class Q51Weight(LegacyMinWeight):
    qs: np.ndarray      # (N, K / 2) uint8: as Q40Weight's
    qh: np.ndarray      # (N, K / 8) uint8: as Q50Weight's
    d: np.ndarray       # (N, K / 32) float32: each block's F16 scale
    m: np.ndarray       # (N, K / 32) float32: each block's F16 min

    split = staticmethod(split_q5_1)

    def values(self, index: np.ndarray | slice) -> np.ndarray:
        return five_bit_values(self.qs[index], self.qh[index]).astype(np.int8)

    def matmul_quantised(self, x: tuple[np.ndarray, ...], path: str = "best") -> np.ndarray:
        """As Q41Weight's."""
        return kernels.matmul_q5_1(*x, self.qs, self.qh, self.d, self.m, path)
