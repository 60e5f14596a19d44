"""PagedKVCache with block tables from the real CFFI allocator (sched/kvblocks.BlockPool)."""
from __future__ import annotations

import numpy as np
import pytest

from velollmd.engine.kvcache import PagedKVCache, num_blocks_for_budget, slot_mapping
from velollmd.sched.kvblocks import BlockPool

LAYERS, BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_DIM = 2, 16, 4, 2, 8


def make_cache() -> PagedKVCache:
    return PagedKVCache(LAYERS, BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_DIM)


def kv_values(num_tokens: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (num_tokens, KV_HEADS, HEAD_DIM)
    return rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)


def write_tokens(cache: PagedKVCache, layer: int, table: list[int], start: int, k, v) -> None:
    positions = np.arange(start, start + len(k))
    cache.write(layer, slot_mapping(table, positions, BLOCK_SIZE), k, v)


def test_slot_mapping_follows_the_block_table():
    slots = slot_mapping([7, 2, 9], np.array([0, 3, 4, 5, 9]), 4)
    assert slots.tolist() == [28, 31, 8, 9, 37]


def test_shape_nbytes_and_budget():
    cache = make_cache()
    assert cache.k.shape == cache.v.shape == (LAYERS, BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    assert cache.nbytes == 2 * LAYERS * BLOCKS * BLOCK_SIZE * KV_HEADS * HEAD_DIM * 4
    per_block = 2 * 24 * 16 * 8 * 64 * 4                        # 1.5 MiB: K and V, float32
    assert num_blocks_for_budget(100, 24, 16, 8, 64) == (100 * 2**20) // per_block == 66
    assert num_blocks_for_budget(0.001, 24, 16, 8, 64) == 1
    with pytest.raises(ValueError):
        PagedKVCache(1, 0, 16, 1, 8)
    small = PagedKVCache.like(cache, 3)
    assert small.k.shape == (LAYERS, 3, BLOCK_SIZE, KV_HEADS, HEAD_DIM) and small.k.dtype == cache.k.dtype


def test_written_tokens_come_back_in_order_through_allocator_tables():
    pool, cache = BlockPool(BLOCKS, BLOCK_SIZE), make_cache()
    tables = {name: pool.allocate(name, list(range(n * 10, n * 10 + n))).block_table
              for name, n in (("a", 10), ("b", 3), ("c", 4))}
    written = {}
    for seed, (name, table) in enumerate(tables.items()):
        written[name] = kv_values(pool.num_tokens(name), seed)
        write_tokens(cache, 1, table, 0, *written[name])
    for name, table in tables.items():
        k, v = cache.gather(1, table, pool.num_tokens(name))
        np.testing.assert_array_equal(k, written[name][0])
        np.testing.assert_array_equal(v, written[name][1])
    assert not cache.k[0].any(), "layer 0 was never written"


def test_gather_padded_equals_gather_per_sequence():
    cache = make_cache()
    cache.k[...] = np.random.default_rng(0).normal(size=cache.k.shape)
    tables = np.array([[3, 5, 0], [1, 0, 0], [8, 9, 10]])                  # (B, max_blocks)
    k, _ = cache.gather_padded(0, tables)
    assert k.shape == (3, 3 * BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    np.testing.assert_array_equal(k[0, :6], cache.gather(0, [3, 5], 6)[0])
    np.testing.assert_array_equal(k[2], cache.gather(0, [8, 9, 10], 12)[0])


def test_fork_then_append_copies_the_shared_block_before_the_child_writes():
    pool, cache = BlockPool(BLOCKS, BLOCK_SIZE), make_cache()
    parent = pool.allocate("parent", list(range(6))).block_table          # 1 full + 1 partial block
    k, v = kv_values(6, seed=1)
    for layer in range(LAYERS):
        write_tokens(cache, layer, parent, 0, k, v)
    pool.fork("parent", "child")
    assert pool.append_tokens("child", [99])
    copies = pool.pop_copies()
    child = pool.block_table("child")
    assert copies == [(parent[1], child[1])] and child[0] == parent[0]
    cache.copy_blocks(copies)
    k_new, v_new = kv_values(1, seed=2)
    write_tokens(cache, 0, child, 6, k_new, v_new)
    child_k, _ = cache.gather(0, child, 7)
    np.testing.assert_array_equal(child_k[:6], k)                         # the shared prefix
    np.testing.assert_array_equal(child_k[6], k_new[0])
    np.testing.assert_array_equal(cache.gather(1, child, 6)[1], v)        # every layer copied
    parent_k, _ = cache.gather(0, parent, 8)
    np.testing.assert_array_equal(parent_k[:6], k)
    assert not parent_k[6:].any(), "the child's write leaked into the parent's block"
