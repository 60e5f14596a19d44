"""The compiled paged decode attention (engine/attention.c) against its numpy reference
(kvcache.gather_padded + ops.decode_attention), its batch invariance, and the cache's checks."""
from __future__ import annotations

import numpy as np
import pytest

from velollmd.engine import kernels, ops
from tests.engine.test_ops import dense_attention
from velollmd.engine.kvcache import PagedKVCache

LAYERS, BLOCKS = 2, 40


@pytest.fixture(autouse=True)
def restore_threads():
    before = kernels.num_threads()
    yield
    kernels.set_num_threads(before)


def filled_cache(block_size: int, n_head_kv: int, head_dim: int, seed: int = 0) -> PagedKVCache:
    cache = PagedKVCache(LAYERS, BLOCKS, block_size, n_head_kv, head_dim)
    rng = np.random.default_rng(seed)
    cache.k[...] = rng.standard_normal(cache.k.shape, dtype=np.float32) * 2
    cache.v[...] = rng.standard_normal(cache.v.shape, dtype=np.float32)
    return cache


def random_tables(lens: list[int], block_size: int, seed: int) -> np.ndarray:
    """(B, max_blocks): each sequence its own shuffled blocks; padding ids are valid blocks too."""
    needed = [-(-n // block_size) for n in lens]
    order = np.random.default_rng(seed).permutation(BLOCKS)
    tables = np.zeros((len(lens), max(needed)), dtype=np.int64)   # (B, max_blocks)
    start = 0
    for row, n in enumerate(needed):
        tables[row, :n] = order[start:start + n]
        tables[row, n:] = order[-1]          # another sequence's block: must be ignored
        start += n
    return tables


def reference(cache: PagedKVCache, layer: int, q: np.ndarray, tables: np.ndarray, lens: np.ndarray,
              scale: float, starts: np.ndarray | None = None, softcap: float = 0.0) -> np.ndarray:
    k, v = cache.gather_padded(layer, tables)                      # (B, max_len, kv, d) each
    return ops.decode_attention(q, k, v, lens, scale, starts, softcap)   # (B, n_head, d)


def test_the_kernel_is_built():
    assert kernels.COMPILED, "velollmd/engine/_matmul is not built: run `make install`"


@pytest.mark.parametrize("n_head, n_head_kv, head_dim", [(16, 4, 64), (4, 4, 8), (7, 1, 13), (6, 2, 72),
                                                        (8, 2, 128)])
@pytest.mark.parametrize("block_size, lens", [(16, [129, 1, 16, 17, 40, 8, 9, 100]), (3, [1, 2, 7, 30]),
                                              (8, [64])])
def test_paged_kernel_equals_the_numpy_reference(n_head, n_head_kv, head_dim, block_size, lens):
    cache = filled_cache(block_size, n_head_kv, head_dim, seed=head_dim)
    tables, context_lens = random_tables(lens, block_size, seed=len(lens)), np.array(lens)
    q = np.random.default_rng(1).standard_normal((len(lens), n_head, head_dim), dtype=np.float32)
    got = kernels.paged_decode_attention(q, cache.k[1], cache.v[1], tables, context_lens, 0.3)
    assert got.shape == q.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, reference(cache, 1, q, tables, context_lens, 0.3), rtol=1e-5, atol=1e-5)


def test_a_sequence_does_not_depend_on_its_batch_or_the_thread_count():
    """Bit for bit: alone, in any batch, with 1 or 3 threads, the KV heads in one unit or split (a
    decode step's greedy tokens)."""
    lens = [33, 5, 128, 1, 70, 16]
    cache, tables = filled_cache(16, 4, 64), random_tables(lens, 16, seed=5)
    q = np.random.default_rng(2).standard_normal((len(lens), 16, 64), dtype=np.float32)
    kernels.set_num_threads(3)
    batched = cache.decode_attention(0, q, tables, np.array(lens), 0.125)
    for threads in (1, 3):      # alone on 3 threads: its KV heads split over units (attention.c)
        kernels.set_num_threads(threads)
        for row, n in enumerate(lens):
            alone = cache.decode_attention(0, q[row:row + 1], tables[row:row + 1, :-(-n // 16)], np.array([n]), 0.125)
            assert np.array_equal(alone[0], batched[row]), (threads, row)
    kernels.set_num_threads(1)
    assert np.array_equal(cache.decode_attention(0, q[2:5], tables[2:5], np.array(lens[2:5]), 0.125),
                          batched[2:5])


def test_without_the_extension_the_cache_uses_the_numpy_reference(monkeypatch):
    lens = [20, 3]
    cache, tables = filled_cache(8, 2, 16), random_tables(lens, 8, seed=9)
    q = np.random.default_rng(3).standard_normal((2, 4, 16), dtype=np.float32)
    compiled = cache.decode_attention(1, q, tables, np.array(lens), 0.25)
    monkeypatch.setattr(kernels, "COMPILED", False)
    fallback = cache.decode_attention(1, q, tables, np.array(lens), 0.25)
    assert np.array_equal(fallback, reference(cache, 1, q, tables, np.array(lens), 0.25))
    np.testing.assert_allclose(compiled, fallback, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("what, tables, lens, q_shape", [
    ("block id past the cache", [[0, BLOCKS]], [20], (1, 4, 16)),
    ("negative block id", [[-1, 2]], [5], (1, 4, 16)),
    ("empty context", [[0, 1]], [0], (1, 4, 16)),
    ("context past the table", [[0, 1]], [17], (1, 4, 16)),
    ("lengths for another batch", [[0, 1]], [3, 4], (1, 4, 16)),
    ("head_dim of another model", [[0, 1]], [3], (1, 4, 8)),
    ("query heads not a multiple of KV heads", [[0, 1]], [3], (1, 3, 16)),
])
def test_the_cache_refuses_what_the_kernel_would_read_out_of_bounds(what, tables, lens, q_shape):
    cache = filled_cache(8, 2, 16)
    with pytest.raises(ValueError):
        cache.decode_attention(0, np.zeros(q_shape, np.float32), np.array(tables), np.array(lens), 0.25)


@pytest.mark.parametrize("window", [0, 6])
def test_soft_capped_decode_from_the_pages_matches_the_dense_reference(window):
    """gemma2's soft-capping, windowed or not (the compiled kernel when built): each sequence
    equals the float64 one-sequence reference over its window's keys."""
    lens = [20, 3, 9]
    cache, tables = filled_cache(8, 2, 16), random_tables(lens, 8, seed=4)
    q = np.random.default_rng(5).standard_normal((3, 4, 16), dtype=np.float32) * 2
    out = cache.decode_attention(1, q, tables, np.array(lens), 0.25, window, softcap=1.5)   # (B, n_head, d)
    for row, n in enumerate(lens):
        k, v = cache.gather(1, tables[row], n)                     # (n, kv, d) each
        first = max(0, n - window) if window else 0
        expected = dense_attention(q[row:row + 1], k[first:], v[first:], n - first - 1, 0.25, softcap=1.5)[0]
        np.testing.assert_allclose(out[row], expected, rtol=1e-4, atol=1e-5)
    assert np.abs(out - cache.decode_attention(1, q, tables, np.array(lens), 0.25, window)).max() > 0.05


def window_starts(lens: list[int], window: int) -> np.ndarray:
    """(B,) each sequence's first visible key under a sliding window of `window` keys."""
    return np.maximum(np.array(lens) - window, 0)


@pytest.mark.parametrize("n_head, n_head_kv, head_dim", [(8, 2, 64), (4, 4, 8), (7, 1, 13), (6, 2, 72)])
@pytest.mark.parametrize("block_size, lens, window", [
    (16, [129, 1, 16, 17, 40, 8, 9, 100], 20),   # windows from mid-block, one block's end, shorter lengths
    (3, [1, 2, 7, 30, 31], 5),                   # a window starting in every slot of a 3-slot block
    (8, [64, 65, 72], 8),                        # a window of exactly one block, aligned and not
    (16, [300, 7], 512),                         # every length shorter than the window: nothing skipped
])
@pytest.mark.parametrize("softcap", [0.0, 1.5, 50.0])
def test_windowed_and_capped_kernel_equals_the_numpy_reference(n_head, n_head_kv, head_dim, block_size, lens,
                                                               window, softcap):
    """The kernel with starts (a sliding window) and/or soft-capping, GQA included, against
    ops.decode_attention over the padded gather with the same starts and cap."""
    cache = filled_cache(block_size, n_head_kv, head_dim, seed=head_dim)
    tables, context_lens = random_tables(lens, block_size, seed=len(lens)), np.array(lens)
    q = np.random.default_rng(7).standard_normal((len(lens), n_head, head_dim), dtype=np.float32) * 3
    starts = window_starts(lens, window)
    got = kernels.paged_decode_attention(q, cache.k[1], cache.v[1], tables, context_lens, 0.3, starts, softcap)
    expected = reference(cache, 1, q, tables, context_lens, 0.3, starts, softcap)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_soft_capping_alone_equals_the_numpy_reference():
    """No window: the cap over every key (scores near tanh8's 0.625 switch and far past it)."""
    lens = [50, 3, 200]
    cache, tables = filled_cache(16, 2, 32, seed=3), random_tables(lens, 16, seed=8)
    q = np.random.default_rng(9).standard_normal((3, 8, 32), dtype=np.float32) * 4
    for cap in (0.5, 1.0, 5.0, 30.0):
        got = kernels.paged_decode_attention(q, cache.k[0], cache.v[0], tables, np.array(lens), 0.2, softcap=cap)
        expected = reference(cache, 0, q, tables, np.array(lens), 0.2, softcap=cap)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        assert np.abs(got - reference(cache, 0, q, tables, np.array(lens), 0.2)).max() > 1e-2, cap


def test_keys_before_the_window_are_never_read():
    """NaN in every key and value before each window (its earlier blocks and its first block's
    earlier slots): a mask would turn them into NaN outputs, a skip leaves them unread."""
    lens, window, block_size = [45, 30], 20, 8
    cache, tables = filled_cache(block_size, 2, 16), random_tables(lens, block_size, seed=2)
    q = np.random.default_rng(4).standard_normal((2, 4, 16), dtype=np.float32)
    clean = cache.decode_attention(0, q, tables, np.array(lens), 0.25, window, softcap=2.0)
    for row, start in enumerate(window_starts(lens, window)):
        for t in range(start):
            block, slot = tables[row, t // block_size], t % block_size
            cache.k[0, block, slot] = cache.v[0, block, slot] = np.nan
    poisoned = cache.decode_attention(0, q, tables, np.array(lens), 0.25, window, softcap=2.0)
    assert not np.isnan(poisoned).any()
    assert np.array_equal(poisoned, clean)


@pytest.mark.parametrize("window, softcap", [(6, 0.0), (6, 1.5), (0, 1.5)])
def test_windowed_decode_without_the_extension_is_the_kernels_reference(monkeypatch, window, softcap):
    """The cache's numpy path (the window's blocks gathered, earlier keys masked) stays the
    kernel's reference: both give the same answer."""
    lens = [20, 3, 9, 17]
    cache, tables = filled_cache(4, 2, 16), random_tables(lens, 4, seed=6)
    q = np.random.default_rng(5).standard_normal((4, 4, 16), dtype=np.float32) * 2
    compiled = cache.decode_attention(1, q, tables, np.array(lens), 0.25, window, softcap)
    monkeypatch.setattr(kernels, "COMPILED", False)
    fallback = cache.decode_attention(1, q, tables, np.array(lens), 0.25, window, softcap)
    np.testing.assert_allclose(compiled, fallback, rtol=1e-5, atol=1e-5)
    starts = window_starts(lens, window) if window else None
    np.testing.assert_allclose(fallback, reference(cache, 1, q, tables, np.array(lens), 0.25, starts, softcap),
                               rtol=1e-5, atol=1e-6)
