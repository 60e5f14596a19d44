"""PagedKVCache: the K/V memory whose blocks the CFFI allocator (sched/kvblocks.BlockPool) hands out.

A token at position `pos` of a sequence lives in slot
`block_table[pos // block_size] * block_size + pos % block_size`; the cache knows slots and
block ids only, never sequences (the allocator owns that mapping).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from velollmd.engine import kernels, ops

# [[backends]] kv_cache_type -> the K/V element type (config.KV_CACHE_TYPES): f16 as llama.cpp's
# default --cache-type-k/-v, half the bytes; writes round to it, reads convert to float32.
KV_CACHE_DTYPES = {"f32": np.float32, "f16": np.float16}


def slot_mapping(block_table: Sequence[int], positions: np.ndarray, block_size: int) -> np.ndarray:
    """Cache slot of each position of one sequence: (T,) int64."""
    table = np.asarray(block_table, dtype=np.int64)                  # (num_blocks_of_seq,)
    return table[positions // block_size] * block_size + positions % block_size


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: np.dtype | type = np.float32) -> int:
    """Bytes of K and V one token takes in every layer."""
    return 2 * num_layers * num_kv_heads * head_dim * np.dtype(dtype).itemsize


def num_blocks_for_budget(budget_mb: float, num_layers: int, block_size: int, num_kv_heads: int,
                          head_dim: int, dtype: np.dtype | type = np.float32) -> int:
    """How many blocks of K and V fit in budget_mb megabytes (2**20 bytes); at least 1."""
    block_bytes = block_size * kv_bytes_per_token(num_layers, num_kv_heads, head_dim, dtype)
    return max(1, int(budget_mb * 2**20) // block_bytes)


class PagedKVCache:
    """K and V, each (num_layers, num_blocks, block_size, num_kv_heads, head_dim), float32 or
    float16 (KV_CACHE_DTYPES); whatever they hold, what comes out (gather, decode_attention) is
    float32."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                 head_dim: int, dtype: np.dtype | type = np.float32):
        if min(num_layers, num_blocks, block_size, num_kv_heads, head_dim) < 1:
            raise ValueError("PagedKVCache: every dimension must be >= 1")
        if np.dtype(dtype) not in map(np.dtype, KV_CACHE_DTYPES.values()):
            raise ValueError(f"PagedKVCache: dtype {np.dtype(dtype)}, float32 or float16 wanted")
        shape = (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        self.k = np.zeros(shape, dtype=dtype)  # (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        self.v = np.zeros(shape, dtype=dtype)  # (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        self.num_layers, self.num_blocks, self.block_size = num_layers, num_blocks, block_size
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        flat = (num_layers, num_blocks * block_size, num_kv_heads, head_dim)
        self._k_slots = self.k.reshape(flat)   # (num_layers, num_slots, num_kv_heads, head_dim) view
        self._v_slots = self.v.reshape(flat)   # (num_layers, num_slots, num_kv_heads, head_dim) view

    @classmethod
    def like(cls, other: "PagedKVCache", num_blocks: int) -> "PagedKVCache":
        """An empty cache of the same layers, block size, heads and dtype with num_blocks blocks."""
        return cls(other.num_layers, num_blocks, other.block_size, other.num_kv_heads, other.head_dim,
                   other.k.dtype)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def release(self) -> None:
        """Nothing to do: host memory goes with the last reference (gpu_model.GpuKVCache frees device memory here)."""

    def write(self, layer: int, slots: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        """Store k, v (T, num_kv_heads, head_dim) at slots (T,), rounded to the cache's dtype; a
        row whose slot is negative is not written (reshape_and_cache's convention:
        model.AttentionPlan's kept rows)."""
        if slots.size and slots.min() < 0:
            written = slots >= 0
            slots, k, v = slots[written], k[written], v[written]
        self._k_slots[layer, slots] = k
        self._v_slots[layer, slots] = v

    def gather(self, layer: int, block_table: Sequence[int],
               num_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """The first num_tokens of a sequence: (k, v), each (num_tokens, num_kv_heads, head_dim) float32
        copies (prefill's attention reads them)."""
        num_blocks = -(-num_tokens // self.block_size)
        blocks = np.asarray(block_table[:num_blocks], dtype=np.int64)     # (num_blocks,)
        shape = (num_blocks * self.block_size, self.num_kv_heads, self.head_dim)
        k = self.k[layer, blocks].reshape(shape)[:num_tokens]
        v = self.v[layer, blocks].reshape(shape)[:num_tokens]
        return k.astype(np.float32, copy=False), v.astype(np.float32, copy=False)

    def gather_padded(self, layer: int, block_tables: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """K/V of B sequences at once: block_tables (B, max_blocks), padded with any valid id.

        Returns (k, v), each (B, max_blocks * block_size, num_kv_heads, head_dim) float32.
        """
        batch, max_blocks = block_tables.shape
        shape = (batch, max_blocks * self.block_size, self.num_kv_heads, self.head_dim)
        k, v = self.k[layer, block_tables].reshape(shape), self.v[layer, block_tables].reshape(shape)
        return k.astype(np.float32, copy=False), v.astype(np.float32, copy=False)

    def decode_attention(self, layer: int, q: np.ndarray, block_tables: np.ndarray,
                         context_lens: np.ndarray, scale: float, window: int = 0,
                         softcap: float = 0.0) -> np.ndarray:
        """B single-token queries q (B, n_head, head_dim) over their first context_lens[b] tokens
        in this layer; block_tables (B, max_blocks) padded with any valid id. (B, n_head, head_dim).
        window > 0 (a sliding-window layer): over the last `window` of them only. softcap > 0
        (gemma2): the scores soft-capped before softmax (ops.soft_cap_).

        With the extension built: the compiled kernel reads K/V in place from the pages (a
        window's earlier blocks skipped; float16 converted as it is read); otherwise a dense
        padded float32 copy and ops.decode_attention (the kernel's reference).
        """
        self._check_decode(q, block_tables, context_lens)
        if kernels.COMPILED:
            starts = np.maximum(np.asarray(context_lens) - window, 0) if window else None   # (B,)
            return kernels.paged_decode_attention(q, self.k[layer], self.v[layer], block_tables,
                                                  context_lens, scale, starts, softcap)
        if window and np.max(context_lens, initial=0) > window:
            return self._windowed_decode(layer, q, block_tables, np.asarray(context_lens), scale, window, softcap)
        k, v = self.gather_padded(layer, block_tables)          # (B, max_len, kv, d) each
        return ops.decode_attention(q, k, v, context_lens, scale, softcap=softcap)

    def _windowed_decode(self, layer: int, q: np.ndarray, block_tables: np.ndarray, lens: np.ndarray,
                         scale: float, window: int, softcap: float) -> np.ndarray:
        """Sliding-window decode without the compiled kernel (and its reference): each sequence's
        blocks from the one that holds its window's first key, gathered densely; the keys before
        the window masked (ops.decode_attention)."""
        starts = np.maximum(lens - window, 0)                       # (B,) first visible position
        first_blocks = starts // self.block_size                    # (B,)
        num_blocks = int((-(-lens // self.block_size) - first_blocks).max())
        tables = np.zeros((len(lens), num_blocks), dtype=np.int64)  # (B, num_blocks), padded with block 0
        for row, first in enumerate(first_blocks):
            used = block_tables[row, first:first + num_blocks]
            tables[row, :len(used)] = used
        k, v = self.gather_padded(layer, tables)                    # (B, num_blocks * block_size, kv, d)
        offsets = first_blocks * self.block_size                    # (B,) position of each gather's row 0
        return ops.decode_attention(q, k, v, lens - offsets, scale, starts - offsets, softcap)

    def _check_decode(self, q: np.ndarray, block_tables: np.ndarray, context_lens: np.ndarray) -> None:
        """What the compiled kernel trusts: block ids inside the cache, lengths inside the tables."""
        batch, max_blocks = block_tables.shape
        if q.ndim != 3 or q.shape[0] != batch or len(context_lens) != batch or q.shape[2] != self.head_dim \
                or q.shape[1] % self.num_kv_heads:
            raise ValueError(f"decode_attention: q {q.shape}, tables {block_tables.shape}, "
                             f"{len(context_lens)} lengths, cache heads {self.num_kv_heads} x {self.head_dim}")
        if batch and (block_tables.min() < 0 or block_tables.max() >= self.num_blocks):
            raise ValueError("decode_attention: a block id outside the KV cache")
        lens = np.asarray(context_lens)                             # (B,)
        if batch and (lens.min() < 1 or lens.max() > max_blocks * self.block_size):
            raise ValueError("decode_attention: a context length outside 1 .. its block table")

    def copy_blocks(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy-on-write: block src -> block dst in every layer, for each (src, dst) pair.

        The pairs come from BlockPool.pop_copies(); a dst is a fresh block, never another src.
        """
        if not pairs:
            return
        src, dst = np.asarray(pairs, dtype=np.int64).T   # (num_pairs,) each
        self.k[:, dst] = self.k[:, src]
        self.v[:, dst] = self.v[:, src]


class SlotTokens:
    """Which token each KV slot holds, as the runner computed it: the token comparison behind
    every prefix-cache hit (a block hash says what a block should hold, this says what it does).

    -1 marks a slot that holds nothing trustworthy: never written, or written before its block
    was handed to another sequence (`forget`): the KV there belongs to another prefix, so even
    an equal token at that slot must not count as a hit.
    """

    def __init__(self, num_blocks: int, block_size: int):
        self.block_size = block_size
        self.tokens = np.full((num_blocks, block_size), -1, np.int32)   # (num_blocks, block_size)

    def record(self, block_table: Sequence[int], start: int, token_ids: Sequence[int]) -> None:
        """token_ids were just computed at positions start.. of the sequence with this table."""
        positions = np.arange(start, start + len(token_ids))                    # (num_new,)
        blocks = np.asarray(block_table, np.int64)[positions // self.block_size]
        self.tokens[blocks, positions % self.block_size] = token_ids

    def forget(self, block_ids: Sequence[int]) -> None:
        """These blocks were just (re)assigned: whatever they held is another prefix's KV."""
        if len(block_ids):
            self.tokens[np.asarray(block_ids, np.int64)] = -1

    def copy(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Follow PagedKVCache.copy_blocks: block dst now holds what src holds."""
        for src, dst in pairs:
            self.tokens[dst] = self.tokens[src]

    def verified_prefix(self, block_table: Sequence[int], token_ids: Sequence[int], num_cached: int) -> int:
        """How many of the first `num_cached` tokens these blocks really hold, slot by slot."""
        if num_cached == 0:
            return 0
        positions = np.arange(num_cached)                                       # (num_cached,)
        blocks = np.asarray(block_table, np.int64)[positions // self.block_size]
        held = self.tokens[blocks, positions % self.block_size]                 # (num_cached,)
        mismatch = np.flatnonzero(held != np.asarray(token_ids[:num_cached], np.int32))
        return int(mismatch[0]) if mismatch.size else num_cached
