"""Q8_0 weights kept quantised in memory, packed at load for the integer kernel (matmul_q8.c).

    w = Q8Weight.from_raw(gguf.raw(name), (N, K))     # int8 values + one scale per 32, packed
    w = Q8Weight.concat([wq, wk, wv])                  # a fused weight (all parts Q8_0)
    y = w.matmul(x)                                    # x (T, K) float32 -> (T, N)
    rows = w.rows(token_ids)                           # dequantised rows (embedding lookup)

A float32 copy of a Q8_0 weight is 3.8x its bytes, and a decode step reads every weight once:
keeping the int8 values makes the step read ~1.1 bytes per weight instead of 4. The product
rounds x to Q8_0 blocks (vecdot.quantize_q8_0, as ggml-cpu converts activations to a Q8_0
weight's vec_dot_type), sums each block's exact int32 products as ggml does, then adds them up
in float with one rounding per block (kernels.matmul_q8_0). The rows are stored interleaved by
16 (pack_rows: matmul_q8.h's layout), so that one vector instruction multiplies 16 rows by 4
bytes of an input, in the byte format of the kernel path that will run (chosen at load): unsigned
w + 128 for the VNNI paths (vpdpbusd's unsigned operand), signed int8 for AVX2 and portable C
(ggml's sign trick reads them as they are). Without the compiled extension: the same rounded x
times the dequantised weight, in float32.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from . import kernels, vecdot
from .quants import split_q8_0
from .quantweight import QuantWeight

QK8_0 = vecdot.QK8_0
GROUP = 16          # rows interleaved in one packed group
WORD = 4            # bytes of a row next to each other in a packed vector
# The kernel path (kernels.Q8_PATHS) that weights are packed for (its byte format) and multiplied
# with: "best" in the daemon; a benchmark may set another before loading, e.g. "avx2" on a VNNI
# CPU to measure a CPU without VNNI.
PATH = "best"


def packs_unsigned(path: str) -> bool:
    """Whether weights packed for the kernel path are stored as unsigned bytes w + 128."""
    return kernels.COMPILED and kernels.q8_0_reads_unsigned(path)


@dataclass(frozen=True)
class Q8Weight(QuantWeight):
    packed: np.ndarray  # (G, K / 32, 8, 16, 4) int8 w or uint8 w + 128, G = ceil(N / 16): pack_rows'
    scales: np.ndarray  # (G, K / 32, 16) float32: each block's F16 scale (0 in the padding rows)
    num_rows: int       # N (the last group's rows past N are zero padding)

    act_type = vecdot.Q8_0

    @classmethod
    def from_raw(cls, raw: np.ndarray, shape: tuple[int, int]) -> Q8Weight:
        """From a GGUF tensor's Q8_0 bytes (copied: the file's mapping may close)."""
        return cls.from_rows(*split_q8_0(raw, shape))

    @classmethod
    def from_rows(cls, q: np.ndarray, d: np.ndarray, path: str | None = None) -> Q8Weight:
        """From q (N, K) int8 and d (N, K / 32) float32 in row order, packed for the kernel path
        (default PATH)."""
        return cls(*pack_rows(q, d, packs_unsigned(path or PATH)), num_rows=q.shape[0])

    @classmethod
    def concat(cls, parts: Sequence[Q8Weight]) -> Q8Weight:
        """Parts stacked by rows (in the first part's byte format): their groups stacked where
        every part but the last fills its groups (the usual Q/K/V), else unpacked, stacked and
        packed again."""
        num_rows = sum(part.num_rows for part in parts)
        unsigned = parts[0].unsigned
        if all(part.num_rows % GROUP == 0 for part in parts[:-1]):
            return cls(np.concatenate([part.with_format(unsigned).packed for part in parts]),
                       np.concatenate([part.scales for part in parts]), num_rows)
        rows = [part.unpacked(slice(None)) for part in parts]
        q, d = np.concatenate([q for q, _ in rows]), np.concatenate([d for _, d in rows])
        return cls(*pack_rows(q, d, unsigned), num_rows=num_rows)

    @property
    def unsigned(self) -> bool:
        """Whether the bytes are w + 128 (the VNNI paths' format) rather than w."""
        return self.packed.dtype == np.uint8

    def with_format(self, unsigned: bool) -> Q8Weight:
        """This weight with its bytes in the given format (itself if they are; else a copy)."""
        if unsigned == self.unsigned:
            return self
        flipped = self.packed.view(np.uint8) ^ 0x80                  # (G, K / 32, 8, 16, 4)
        return replace(self, packed=flipped.view(np.uint8 if unsigned else np.int8))

    def for_path(self, path: str) -> Q8Weight:
        """This weight in the byte format the kernel path reads (a copy if it reads the other)."""
        return self.with_format(packs_unsigned(path))

    @property
    def shape(self) -> tuple[int, int]:
        return self.num_rows, self.packed.shape[1] * QK8_0

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales.nbytes

    def unpacked(self, index: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        """The rows' values (R, K) int8 and scales (R, K / 32) float32, in the index's order."""
        ids = np.arange(self.num_rows)[index]                                   # (R,)
        group, lane = np.divmod(ids, GROUP)
        values = self.packed[group, :, :, lane, :]                              # (R, K / 32, 8, 4)
        if self.unsigned:
            values = (values ^ 0x80).view(np.int8)
        q = values.reshape(len(ids), -1)                                        # (R, K) int8
        return q, self.scales[group, :, lane]                                   # (R, K), (R, K / 32)

    def rows(self, index: np.ndarray | slice) -> np.ndarray:
        q, d = self.unpacked(index)                                           # (R, K), (R, K / 32)
        values = q.reshape(q.shape[0], -1, QK8_0).astype(np.float32)          # (R, K / 32, 32)
        values *= d[:, :, None]
        return values.reshape(q.shape)

    def quantize_input(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return quantize_rows(x)

    def matmul_quantised(self, x: tuple[np.ndarray, np.ndarray], path: str | None = None) -> np.ndarray:
        """path (default PATH): one that reads this weight's format ("best": the fastest such),
        else ValueError (for_path converts)."""
        xq, xd = x
        return kernels.matmul_q8_0(xq, xd, self.packed, self.scales, self.num_rows, path or PATH)


def pack_rows(q: np.ndarray, d: np.ndarray, unsigned: bool) -> tuple[np.ndarray, np.ndarray]:
    """q (N, K) int8, d (N, K / 32) float32 -> matmul_q8.h's packed (G, K / 32, 8, 16, 4), byte
    [g, j, v, r, i] = q[16g + r, 32j + 4v + i] as int8, or + 128 as uint8 if unsigned, and scales
    (G, K / 32, 16) float32, N padded with zero rows to G * 16."""
    n, k = q.shape
    if n % GROUP:
        q = np.pad(q, ((0, -n % GROUP), (0, 0)))                                         # (16G, K)
        d = np.pad(d, ((0, -n % GROUP), (0, 0)))                                         # (16G, K / 32)
    groups = q.view(np.int8).reshape(-1, GROUP, k // QK8_0, QK8_0 // WORD, WORD)        # (G, 16, nb, 8, 4)
    packed = np.ascontiguousarray(groups.transpose(0, 2, 3, 1, 4))                     # (G, nb, 8, 16, 4)
    if unsigned:
        packed = packed.view(np.uint8)
        packed ^= 0x80
    scales = np.ascontiguousarray(d.reshape(-1, GROUP, k // QK8_0).transpose(0, 2, 1))  # (G, nb, 16)
    return packed, scales


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (T, K) float32 -> its Q8_0 values xq (T, K) int8 and scales xd (T, K / 32) float32
    (the compiled twin of vecdot.quantize_q8_0 when there is one: the same bits)."""
    if kernels.COMPILED:
        return kernels.quantize_q8_0(x)
    d, q = vecdot.quantize_q8_0(x)                                   # (n, 1) float16, (n, 32) int8
    return q.reshape(x.shape), d.astype(np.float32).reshape(x.shape[0], -1)
