"""What the weight types kept quantised in memory share (q8weight.Q8Weight, q4kweight.Q4KWeight,
q6kweight.Q6KWeight), and StackedWeight: parts of different such types stacked by rows.

A subclass is a frozen dataclass of arrays with one leading row per weight row, so that parts
stack by rows field by field (concat: a fused Q/K/V; Q8Weight, whose rows are packed by
groups of 16, has its own from_raw, concat and nbytes). It says its activation type (act_type,
what ggml-cpu rounds x to for it), its shape, its dequantised rows and its compiled product.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TypeVar

import numpy as np

from . import kernels, vecdot

W = TypeVar("W", bound="QuantWeight")


@dataclass(frozen=True)
class QuantWeight:
    act_type = vecdot.F32       # (class attributes) the subclass's vecdot.activation_type, and
    split = None                # its quants.split_* (raw bytes, (N, K)) -> its fields in order

    @classmethod
    def from_raw(cls: type[W], raw: np.ndarray, shape: tuple[int, int]) -> W:
        """From a GGUF tensor's bytes of the subclass's type (copied: the file's mapping may close)."""
        return cls(*cls.split(raw, shape))

    @classmethod
    def concat(cls: type[W], parts: Sequence[W]) -> W:
        """Parts stacked by rows, e.g. Q, K, V into one (q_dim + 2 * kv_dim, K) weight."""
        return cls(*(np.concatenate([getattr(part, f.name) for part in parts]) for f in fields(cls)))

    @property
    def shape(self) -> tuple[int, int]:
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f.name).nbytes for f in fields(self))

    def rows(self, index: np.ndarray | slice) -> np.ndarray:
        """Dequantised rows (len, K) float32, bit for bit quants.dequantize's values."""
        raise NotImplementedError

    def matmul(self, x: np.ndarray) -> np.ndarray:
        """x (T, K) float32 @ self^T -> (T, N), x rounded to act_type first (ggml's product).
        Without the compiled extension: the same rounded x times the dequantised weight."""
        if x.shape[0] == 0:                 # e.g. a pass with no logits wanted
            return np.empty((0, self.shape[0]), dtype=np.float32)
        if not kernels.COMPILED:
            return vecdot.round_activations(x, self.act_type) @ self.rows(slice(None)).T
        return self._product(np.ascontiguousarray(x, dtype=np.float32))

    def _product(self, x: np.ndarray) -> np.ndarray:
        """The compiled kernel's x (T, K) @ self^T (T >= 1)."""
        return self.matmul_quantised(self.quantize_input(x))

    def quantize_input(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """x (T, K) float32 rounded to act_type, as matmul_quantised takes it (COMPILED only)."""
        raise NotImplementedError

    def matmul_quantised(self, x: tuple[np.ndarray, ...], path: str = "best") -> np.ndarray:
        """x already quantize_input's @ self^T -> (T, N) float32 (path: the kernel's, for tests)."""
        raise NotImplementedError


class KQuantWeight(QuantWeight):
    """What the K-quant types share: their inputs are rounded to Q8_K blocks."""
    act_type = vecdot.Q8_K

    def quantize_input(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return kernels.quantize_q8_k(x)


@dataclass(frozen=True)
class StackedWeight:
    """Kept-quantised parts of different types stacked by rows (a Q4_K_M file's fused Q/K/V
    with a Q6_K V): each part multiplies x its own way, so the product is each part's, side by
    side (y's columns in the parts' order)."""
    parts: tuple[QuantWeight, ...]

    @property
    def shape(self) -> tuple[int, int]:
        return sum(part.shape[0] for part in self.parts), self.parts[0].shape[1]

    @property
    def nbytes(self) -> int:
        return sum(part.nbytes for part in self.parts)

    def rows(self, index: np.ndarray | slice) -> np.ndarray:
        """Dequantised rows (len, K) float32 (all of them dequantised first: for tests and tools)."""
        return np.concatenate([part.rows(slice(None)) for part in self.parts])[index]

    def matmul(self, x: np.ndarray) -> np.ndarray:
        """x (T, K) float32 @ self^T -> (T, N), x rounded once per activation type of the parts
        (a Q4_K_M Q/K/V's Q4_K and Q6_K parts share one Q8_K rounding)."""
        if x.shape[0] == 0 or not kernels.COMPILED:
            return np.concatenate([part.matmul(x) for part in self.parts], axis=1)
        x = np.ascontiguousarray(x, dtype=np.float32)
        rounded: dict[int, tuple[np.ndarray, ...]] = {}
        for part in self.parts:
            if part.act_type not in rounded:
                rounded[part.act_type] = part.quantize_input(x)
        return np.concatenate([part.matmul_quantised(rounded[part.act_type]) for part in self.parts], axis=1)
