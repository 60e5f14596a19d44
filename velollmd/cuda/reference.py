"""Numpy references for the parts of the kernels that only the paged/packed layouts have.

The math references are the CPU engine's own functions (engine/ops.py: rms_norm, apply_rope,
silu, decode_attention, causal_attention; engine/quants.py: Q8_0/F16 dequantisation): one piece
of logic, not two. This package may not import the engine (setup.cfg's layer contract), so the
tests compose the two: e.g. `ops.decode_attention(q, *dense_kv(...), context_lens, scale)` is
the reference of paged_attention_decode. What lives here turns paged and packed inputs into the
dense arrays those functions take, and states what the memory-only kernels must do.
"""
from __future__ import annotations

import numpy as np


def slots_of(block_tables: np.ndarray, seq: int, positions: np.ndarray, block_size: int) -> np.ndarray:
    """Cache slot of each position of sequence seq: (T,) int64 (engine/kvcache.slot_mapping's rule)."""
    table = np.asarray(block_tables[seq], dtype=np.int64)                  # (max_blocks,)
    return table[positions // block_size] * block_size + positions % block_size


def dense_kv(cache: np.ndarray, block_tables: np.ndarray, context_lens: np.ndarray) -> np.ndarray:
    """One layer's paged K or V as a zero-padded dense float32 array.

    cache (num_blocks, block_size, num_kv_heads, head_dim); block_tables (B, max_blocks);
    context_lens (B,). Returns (B, max(context_lens), num_kv_heads, head_dim); positions past a
    sequence's length are 0 and never read from the cache.
    """
    block_size = cache.shape[1]
    max_len = int(np.max(context_lens))
    dense = np.zeros((len(context_lens), max_len) + cache.shape[2:], dtype=np.float32)
    flat = cache.reshape((-1,) + cache.shape[2:])                          # (num_slots, kv, d)
    for seq, length in enumerate(context_lens):
        slots = slots_of(block_tables, seq, np.arange(length), block_size)  # (length,)
        dense[seq, :length] = flat[slots]
    return dense


def sequence_kv(cache: np.ndarray, block_tables: np.ndarray, seq: int, length: int) -> np.ndarray:
    """The first `length` K or V rows of one sequence: (length, num_kv_heads, head_dim) float32."""
    return dense_kv(cache, block_tables[seq:seq + 1], np.array([length]))[0]


def reshape_and_cache(k_cache: np.ndarray, v_cache: np.ndarray, key: np.ndarray, value: np.ndarray,
                      slot_mapping: np.ndarray) -> None:
    """In place: rows of key, value (T, num_kv_heads, head_dim) float32 into caches
    (num_blocks, block_size, num_kv_heads, head_dim) at slot_mapping (T,); slot < 0 is skipped.
    A float16 cache rounds to nearest even (the kernel's cvt.rn.f16.f32)."""
    keep = slot_mapping >= 0
    flat_k = k_cache.reshape((-1,) + k_cache.shape[2:])                   # (num_slots, kv, d) view
    flat_v = v_cache.reshape((-1,) + v_cache.shape[2:])
    flat_k[slot_mapping[keep]] = key[keep].astype(k_cache.dtype)
    flat_v[slot_mapping[keep]] = value[keep].astype(v_cache.dtype)


def embedding(table: np.ndarray, token_ids: np.ndarray) -> np.ndarray:
    """table (n_vocab, n_embd) float32 or float16, token_ids (T,) -> (T, n_embd) float32."""
    return table[token_ids].astype(np.float32)

