"""Inputs for the kernel tests: paged caches whose unused slots hold NaN (a kernel that reads
past a sequence's length, or a slot it was not given, turns its output into NaN)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from velollmd.cuda import reference

LENS = [1, 15, 16, 17, 203]          # decode contexts: one token, block tails, a long-ish one


def max_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


@dataclass
class PagedCase:
    q: np.ndarray              # (num_seqs, num_heads, head_dim) float32: one decode query per sequence
    k_cache: np.ndarray        # (num_blocks, block_size, num_kv_heads, head_dim) float32 or float16
    v_cache: np.ndarray        # (num_blocks, block_size, num_kv_heads, head_dim)
    block_tables: np.ndarray   # (num_seqs, max_blocks) int32, shuffled block ids, tails padded with 0
    context_lens: np.ndarray   # (num_seqs,) int32
    scale: float


def paged_case(rng: np.random.Generator, context_lens, num_heads: int, num_kv_heads: int, head_dim: int,
               block_size: int, dtype) -> PagedCase:
    lens = np.asarray(context_lens, np.int32)
    blocks_per_seq = -(-lens // block_size)                                # (num_seqs,)
    num_blocks = int(blocks_per_seq.sum()) + 3                             # 3 never handed out
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache, v_cache = np.full(shape, np.nan, dtype), np.full(shape, np.nan, dtype)
    order = rng.permutation(num_blocks)[:int(blocks_per_seq.sum())]
    tables = np.zeros((len(lens), int(blocks_per_seq.max())), np.int32)
    for seq, (first, count) in enumerate(zip(np.cumsum(blocks_per_seq) - blocks_per_seq, blocks_per_seq)):
        tables[seq, :count] = order[first:first + count]
        slots = reference.slots_of(tables, seq, np.arange(lens[seq]), block_size)
        rows = rng.standard_normal((2, lens[seq], num_kv_heads, head_dim)).astype(np.float32)
        reference.reshape_and_cache(k_cache, v_cache, rows[0], rows[1], slots)
    q = rng.standard_normal((len(lens), num_heads, head_dim)).astype(np.float32)
    return PagedCase(q, k_cache, v_cache, tables, lens, 1.0 / np.sqrt(head_dim))


@dataclass
class PrefillCase:
    q: np.ndarray              # (num_tokens, num_heads, head_dim) float32, packed
    k_cache: np.ndarray
    v_cache: np.ndarray
    block_tables: np.ndarray   # (num_seqs, max_blocks) int32
    query_start: np.ndarray    # (num_seqs + 1,) int32
    context_lens: np.ndarray   # (num_seqs,) int32: cached prefix + new tokens
    scale: float


def prefill_case(rng: np.random.Generator, query_lens, num_computed, num_heads: int, num_kv_heads: int,
                 head_dim: int, block_size: int, dtype) -> PrefillCase:
    """Sequences with num_computed cached tokens and query_lens new ones (already in the cache)."""
    lens = np.asarray(query_lens, np.int32) + np.asarray(num_computed, np.int32)
    paged = paged_case(rng, lens, num_heads, num_kv_heads, head_dim, block_size, dtype)
    query_start = np.concatenate([[0], np.cumsum(query_lens)]).astype(np.int32)
    q = rng.standard_normal((int(query_start[-1]), num_heads, head_dim)).astype(np.float32)
    return PrefillCase(q, paged.k_cache, paged.v_cache, paged.block_tables, query_start, lens, paged.scale)


def q8_0_bytes(weight: np.ndarray) -> np.ndarray:
    """(N, K) float32 -> GGUF Q8_0 bytes (uint8) with the gguf package's quantiser (llama.cpp's)."""
    from gguf import GGMLQuantizationType, quants
    return quants.quantize(weight, GGMLQuantizationType.Q8_0).reshape(-1)


def f16_bytes(weight: np.ndarray) -> np.ndarray:
    return weight.astype(np.float16).view(np.uint8).reshape(-1)


def weight_bytes(weight: np.ndarray, kind: str) -> np.ndarray:
    """(N, K) float32 -> the raw GGUF bytes of matmul.cu's `kind` (f32, f16, q8_0)."""
    if kind == "q8_0":
        return q8_0_bytes(weight)
    return f16_bytes(weight) if kind == "f16" else np.ascontiguousarray(weight, np.float32).view(np.uint8).reshape(-1)
