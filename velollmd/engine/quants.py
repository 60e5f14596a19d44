"""Dequantise GGML tensor bytes to float32: F32, F16, BF16, Q4_0 .. Q8_0, Q4_K, Q5_K, Q6_K.

Block layouts follow ggml's `block_q*` structs (ggml-common.h); every multi-byte field is
little-endian. A row of a quantised tensor is `row_len / block_size` blocks of `type_size`
bytes. Decoding is vectorised over many blocks at once; the arithmetic is done in float32 in
the same order as ggml's reference `dequantize_row_*` (scale first, then times q, minus the
min), so results are bit-identical to llama.cpp's gguf-py `gguf.quants.dequantize`.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

QK_K = 256                    # elements in a K-quant super-block
CHUNK_BLOCKS = 1 << 14        # blocks decoded per numpy pass: bounds temporary memory

GGML_TYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K",
    16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S",
    22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
    29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4", 40: "NVFP4", 41: "Q1_0",
}
GGML_TYPES: dict[str, int] = {name: code for code, name in GGML_TYPE_NAMES.items()}

# ggml type -> (elements per block, bytes per block): ggml's type_traits blck_size / type_size.
GGML_BLOCK_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
    15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18),
    21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4),
    27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66),
    39: (32, 17), 40: (64, 36), 41: (128, 18),
}


class QuantError(ValueError):
    """Tensor bytes that do not fit their type and shape."""


class UnsupportedTensorType(QuantError):
    """A ggml type this module cannot dequantise (IQ*, TQ*, ...) or does not know at all."""

    def __init__(self, ggml_type: int):
        name = GGML_TYPE_NAMES.get(ggml_type, "unknown")
        supported = ", ".join(GGML_TYPE_NAMES[t] for t in _DECODERS)
        super().__init__(f"ggml type {ggml_type} ({name}) cannot be dequantised; supported: {supported}")
        self.ggml_type = ggml_type


def type_name(ggml_type: int) -> str:
    return GGML_TYPE_NAMES.get(ggml_type, f"type {ggml_type}")


def type_nbytes(ggml_type: int, num_elements: int) -> int:
    """Bytes that num_elements of ggml_type take; num_elements must fill whole blocks."""
    if ggml_type not in GGML_BLOCK_SIZES:
        raise UnsupportedTensorType(ggml_type)
    block_size, type_size = GGML_BLOCK_SIZES[ggml_type]
    if num_elements % block_size:
        raise QuantError(f"{num_elements} elements of {type_name(ggml_type)} "
                         f"are not whole blocks of {block_size}")
    return num_elements // block_size * type_size


def dequantize(raw: np.ndarray, ggml_type: int, shape: tuple[int, ...]) -> np.ndarray:
    """Decode raw tensor bytes (uint8, e.g. GGUFFile.raw(name)) into a new float32 array of shape.

    shape is in numpy order (rows last-dimension-contiguous); its last dimension must be a
    whole number of blocks, as ggml requires of every row.
    """
    if ggml_type not in _DECODERS:
        raise UnsupportedTensorType(ggml_type)
    shape = tuple(int(d) for d in shape)
    block_size, type_size = GGML_BLOCK_SIZES[ggml_type]
    if shape and shape[-1] % block_size:
        raise QuantError(f"row length {shape[-1]} is not a multiple of the "
                         f"{type_name(ggml_type)} block size {block_size}")
    num_elements = math.prod(shape)
    expected = type_nbytes(ggml_type, num_elements)
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)  # (nbytes,)
    if raw.size != expected:
        raise QuantError(f"{raw.size} bytes for {shape} {type_name(ggml_type)}, expected {expected}")
    blocks = raw.reshape(-1, type_size)                      # (num_blocks, type_size)
    out = np.empty((num_elements // block_size, block_size), dtype=np.float32)  # (num_blocks, block_size)
    decode = _DECODERS[ggml_type]
    for start in range(0, blocks.shape[0], CHUNK_BLOCKS):
        stop = start + CHUNK_BLOCKS
        out[start:stop] = decode(blocks[start:stop])
    return out.reshape(shape)


def split_q8_0(raw: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A Q8_0 matrix's bytes, kept quantised: q (N, K) int8 and d (N, K / 32) float32 (each
    block's F16 scale); q * d per block is dequantize's value, bit for bit."""
    rows, cols = (int(n) for n in shape)
    blocks = _matrix_blocks(raw, GGML_TYPES["Q8_0"], rows, cols)                  # (n, 34)
    d = _f16(blocks[:, :2]).reshape(rows, cols // 32)                               # (N, K / 32)
    q = np.ascontiguousarray(blocks[:, 2:]).view(np.int8).reshape(rows, cols)       # (N, K)
    return q, d


def split_q4_k(raw: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """A Q4_K matrix's bytes, kept quantised and unpacked by row: qs (N, K / 2) uint8 (the nibble
    bytes as stored), sc and mn (N, K / 32) uint8 (6-bit scales and mins), d and dmin (N, K / 256)
    float32 (the F16 values); (d * sc) * q - dmin * mn per sub-block is dequantize's value."""
    rows, cols = (int(n) for n in shape)
    blocks = _matrix_blocks(raw, GGML_TYPES["Q4_K"], rows, cols)                  # (n, 144)
    return (np.ascontiguousarray(blocks[:, 16:]).reshape(rows, cols // 2),
            *_split_scales_mins(blocks, rows, cols))


def split_q5_k(raw: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """A Q5_K matrix's bytes, unpacked by row as split_q4_k's (qs the low 4 bits of each value),
    then qh (N, K / 8) uint8: per 256 values the 32 bytes as stored, bit s of byte i the 5th bit
    of value i of sub-block s."""
    rows, cols = (int(n) for n in shape)
    blocks = _matrix_blocks(raw, GGML_TYPES["Q5_K"], rows, cols)                  # (n, 176)
    return (np.ascontiguousarray(blocks[:, 48:]).reshape(rows, cols // 2),
            *_split_scales_mins(blocks, rows, cols),
            np.ascontiguousarray(blocks[:, 16:48]).reshape(rows, cols // 8))


def _split_scales_mins(blocks: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, ...]:
    """Q4_K/Q5_K blocks (n, type_size) -> sc, mn (N, K / 32) uint8 and d, dmin (N, K / 256) float32."""
    scales, mins = _k_scales_mins(blocks[:, 4:16])                                 # (n, 8) each
    per_row = cols // QK_K
    return (scales.reshape(rows, cols // 32), mins.reshape(rows, cols // 32),
            _f16(blocks[:, :2]).reshape(rows, per_row), _f16(blocks[:, 2:4]).reshape(rows, per_row))


def split_q6_k(raw: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Q6_K matrix's bytes, unpacked by row: q (N, K) uint8 the 6-bit values (0..63) in order;
    sc (N, K / 16) int8 one scale per 16 values; d (N, K / 256) float32 (the F16 values);
    (d * sc) * (q - 32) per 16 values is dequantize's value."""
    rows, cols = (int(n) for n in shape)
    blocks = _matrix_blocks(raw, GGML_TYPES["Q6_K"], rows, cols)                  # (n, 210)
    scales = np.ascontiguousarray(blocks[:, 192:208]).view(np.int8)                # (n, 16)
    return (_q6_k_values(blocks).reshape(rows, cols), scales.reshape(rows, cols // 16),
            _f16(blocks[:, 208:210]).reshape(rows, cols // QK_K))


# the legacy types' block fields after d (and m for Q4_1 / Q5_1): (name, bytes), in block order
_LEGACY_FIELDS = {"Q4_0": (("qs", 16),), "Q5_0": (("qh", 4), ("qs", 16)),
                  "Q4_1": (("qs", 16),), "Q5_1": (("qh", 4), ("qs", 16))}


def split_legacy(raw: np.ndarray, shape: tuple[int, int], type_name: str) -> dict[str, np.ndarray]:
    """A Q4_0 / Q5_0 / Q4_1 / Q5_1 matrix's bytes, kept quantised: qs (N, K / 2) uint8 (each
    block's 16 nibble bytes as stored), qh (N, K / 8) uint8 (Q5_*: each block's 4 bytes of fifth
    bits), d (N, K / 32) float32 (the F16 scales) and m (N, K / 32) float32 (*_1: the F16 mins)."""
    rows, cols = (int(n) for n in shape)
    blocks = _matrix_blocks(raw, GGML_TYPES[type_name], rows, cols)           # (n, block bytes)
    per_row = cols // 32
    fields = {"d": _f16(blocks[:, :2]).reshape(rows, per_row)}
    start = 2
    if type_name.endswith("_1"):
        fields["m"] = _f16(blocks[:, 2:4]).reshape(rows, per_row)
        start = 4
    for name, size in _LEGACY_FIELDS[type_name]:
        fields[name] = np.ascontiguousarray(blocks[:, start:start + size]).reshape(rows, per_row * size)
        start += size
    return fields


def split_q4_0(raw: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """qs, d (split_legacy's); d * (nibble - 8) is dequantize's value."""
    f = split_legacy(raw, shape, "Q4_0")
    return f["qs"], f["d"]


def split_q5_0(raw: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """qs, qh, d; d * (nibble + 16 * bit - 16) is dequantize's value."""
    f = split_legacy(raw, shape, "Q5_0")
    return f["qs"], f["qh"], f["d"]


def split_q4_1(raw: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """qs, d, m; d * nibble + m is dequantize's value."""
    f = split_legacy(raw, shape, "Q4_1")
    return f["qs"], f["d"], f["m"]


def split_q5_1(raw: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """qs, qh, d, m; d * (nibble + 16 * bit) + m is dequantize's value."""
    f = split_legacy(raw, shape, "Q5_1")
    return f["qs"], f["qh"], f["d"], f["m"]


def nibble_values(qs: np.ndarray) -> np.ndarray:
    """qs (R, K / 2) uint8 (16 bytes a block) -> the nibbles (R, K / 32, 32) uint8 in x's order:
    per block the 16 low nibbles, then the 16 high ones."""
    return _nibbles(qs.reshape(qs.shape[0], -1, 16))


def five_bit_values(qs: np.ndarray, qh: np.ndarray) -> np.ndarray:
    """The nibbles plus 16 * their fifth bits (qh (R, K / 8): bit i of each block's little-endian
    uint32 is value i's): (R, K / 32, 32) uint8, 0..31."""
    bits = np.unpackbits(qh.reshape(qh.shape[0], -1, 4), axis=-1, bitorder="little")   # (R, K / 32, 32)
    return nibble_values(qs) | (bits << 4)


def _matrix_blocks(raw: np.ndarray, ggml_type: int, rows: int, cols: int) -> np.ndarray:
    """A (rows, cols) matrix's bytes as (n, type_size) uint8 blocks, its size checked."""
    block_size, type_size = GGML_BLOCK_SIZES[ggml_type]
    name = GGML_TYPE_NAMES[ggml_type]
    if cols % block_size:
        raise QuantError(f"row length {cols} is not a multiple of the {name} block size {block_size}")
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)                    # (nbytes,)
    expected = rows * cols // block_size * type_size
    if raw.size != expected:
        raise QuantError(f"{raw.size} bytes for {(rows, cols)} {name}, expected {expected}")
    return raw.reshape(-1, type_size)


# Each decoder maps (n, type_size) uint8 blocks to (n, block_size) float32 values.

def _f16(field: np.ndarray) -> np.ndarray:
    """(n, 2) uint8 -> (n, 1) float32: one little-endian half per block."""
    return np.ascontiguousarray(field).view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, k, m) packed bytes -> (n, k, 2*m): low nibbles of all m bytes, then high nibbles."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _decode_f32(blocks: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(blocks).view("<f4")


def _decode_f16(blocks: np.ndarray) -> np.ndarray:
    return _f16(blocks)


def _decode_bf16(blocks: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32."""
    halves = np.ascontiguousarray(blocks).view("<u2").astype(np.uint32)  # (n, 1)
    return (halves << 16).view(np.float32)


def _decode_q4_0(blocks: np.ndarray) -> np.ndarray:
    d = _f16(blocks[:, :2])                                   # (n, 1)
    q = _nibbles(blocks[:, None, 2:])[:, 0].astype(np.int8) - np.int8(8)  # (n, 32)
    return d * q.astype(np.float32)


def _decode_q4_1(blocks: np.ndarray) -> np.ndarray:
    d, m = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])          # (n, 1) each
    q = _nibbles(blocks[:, None, 4:])[:, 0].astype(np.float32)  # (n, 32)
    return d * q + m


def _q5_values(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """(n, 4) high-bit field + (n, 16) nibbles -> (n, 32) uint8 values 0..31."""
    return five_bit_values(qs, qh)[:, 0]


def _decode_q5_0(blocks: np.ndarray) -> np.ndarray:
    d = _f16(blocks[:, :2])                                   # (n, 1)
    q = _q5_values(blocks[:, 2:6], blocks[:, 6:]).astype(np.int8) - np.int8(16)  # (n, 32)
    return d * q.astype(np.float32)


def _decode_q5_1(blocks: np.ndarray) -> np.ndarray:
    d, m = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])          # (n, 1) each
    q = _q5_values(blocks[:, 4:8], blocks[:, 8:]).astype(np.float32)  # (n, 32)
    return d * q + m


def _decode_q8_0(blocks: np.ndarray) -> np.ndarray:
    d = _f16(blocks[:, :2])                                   # (n, 1)
    return d * np.ascontiguousarray(blocks[:, 2:]).view(np.int8).astype(np.float32)


def _k_scales_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: 12 bytes -> 8 six-bit scales and 8 six-bit mins (ggml's get_scale_min_k4).

    Bytes 0-3 hold scales 0-3 (low 6 bits) and the top 2 bits of scales 4-7; bytes 4-7 the
    same for the mins; bytes 8-11 the low 4 bits of scale (low nibble) and min (high nibble) 4-7.
    """
    lo_sc, lo_m, hi = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]  # (n, 4) each
    scales = np.concatenate([lo_sc & 0x3F, (hi & 0x0F) | ((lo_sc >> 6) << 4)], axis=-1)  # (n, 8)
    mins = np.concatenate([lo_m & 0x3F, (hi >> 4) | ((lo_m >> 6) << 4)], axis=-1)        # (n, 8)
    return scales, mins


def _k_sub_block_affine(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: per 32-element sub-block scale d*sc and offset dmin*m, each (n, 8, 1)."""
    d, dmin = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])       # (n, 1) each
    scales, mins = _k_scales_mins(blocks[:, 4:16])            # (n, 8) each
    return (d * scales.astype(np.float32))[:, :, None], (dmin * mins.astype(np.float32))[:, :, None]


def _decode_q4_k(blocks: np.ndarray) -> np.ndarray:
    scale, offset = _k_sub_block_affine(blocks)               # (n, 8, 1) each
    q = _nibbles(blocks[:, 16:].reshape(-1, 4, 32))           # (n, 4, 64): sub-blocks 2i, 2i+1
    q = q.reshape(-1, 8, 32).astype(np.float32)               # (n, 8, 32)
    return (scale * q - offset).reshape(-1, QK_K)


def _decode_q5_k(blocks: np.ndarray) -> np.ndarray:
    scale, offset = _k_sub_block_affine(blocks)               # (n, 8, 1) each
    low = _nibbles(blocks[:, 48:].reshape(-1, 4, 32)).reshape(-1, 8, 32)   # (n, 8, 32)
    qh = blocks[:, 16:48]                                     # (n, 32): bit s = sub-block s
    high = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1  # (n, 8, 32)
    q = (low | (high << 4)).astype(np.float32)                # (n, 8, 32)
    return (scale * q - offset).reshape(-1, QK_K)


def _q6_k_values(blocks: np.ndarray) -> np.ndarray:
    """Q6_K: (n, 210) blocks -> (n, 256) uint8 values 0..63 (the weight is d * sc * (q - 32)) in
    order. Two halves of 128: ql nibbles give the low 4 bits, qh 2-bit fields the high 2."""
    ql = blocks[:, :128].reshape(-1, 2, 64)                   # (n, 2, 64)
    qh = blocks[:, 128:192].reshape(-1, 2, 1, 32)             # (n, 2, 1, 32)
    low = _nibbles(ql).reshape(-1, 2, 4, 32)                  # (n, 2, 4, 32)
    high = (qh >> np.array([0, 2, 4, 6], dtype=np.uint8)[None, None, :, None]) & 3  # (n, 2, 4, 32)
    return (low | (high << 4)).reshape(-1, QK_K)


def _decode_q6_k(blocks: np.ndarray) -> np.ndarray:
    scales = np.ascontiguousarray(blocks[:, 192:208]).view(np.int8).astype(np.float32)  # (n, 16)
    d = _f16(blocks[:, 208:210])                              # (n, 1)
    q = (_q6_k_values(blocks).astype(np.int8) - np.int8(32)).reshape(-1, 16, 16).astype(np.float32)  # one scale per 16
    return ((d * scales)[:, :, None] * q).reshape(-1, QK_K)


_DECODERS: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    0: _decode_f32, 1: _decode_f16, 30: _decode_bf16,
    2: _decode_q4_0, 3: _decode_q4_1, 6: _decode_q5_0, 7: _decode_q5_1, 8: _decode_q8_0,
    12: _decode_q4_k, 13: _decode_q5_k, 14: _decode_q6_k,
}
SUPPORTED_TYPES = frozenset(_DECODERS)
