"""kv_cache_type = "f16": the paged KV cache as float16 (llama.cpp's default cache type). The
compiled kernel over it (attention_f16.c / attention_f16c.c) against the float32 kernel on the
same values, the cache's rounding and float32 reads, the budget, and a model run on it."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from tests.engine.test_attention_kernel import random_tables, reference, window_starts
from tests.rig.llama import make_tiny_model
from velollmd.config import SchedulerConfig
from velollmd.engine import kernels, loader
from velollmd.engine.kvcache import KV_CACHE_DTYPES, PagedKVCache
from velollmd.engine.model import Batch, SeqChunk

LAYERS, BLOCKS = 2, 40


def caches(block_size: int, n_head_kv: int, head_dim: int, seed: int = 0) -> tuple[PagedKVCache, PagedKVCache]:
    """(f16 cache, f32 cache holding exactly its values)."""
    f16 = PagedKVCache(LAYERS, BLOCKS, block_size, n_head_kv, head_dim, np.float16)
    rng = np.random.default_rng(seed)
    f16.k[...] = rng.standard_normal(f16.k.shape, dtype=np.float32) * 2
    f16.v[...] = rng.standard_normal(f16.v.shape, dtype=np.float32)
    f32 = PagedKVCache(LAYERS, BLOCKS, block_size, n_head_kv, head_dim)
    f32.k[...], f32.v[...] = f16.k, f16.v
    return f16, f32


@pytest.mark.parametrize("n_head, n_head_kv, head_dim", [(16, 4, 64), (7, 1, 13), (6, 2, 72), (8, 2, 128)])
@pytest.mark.parametrize("block_size, lens, window", [(16, [129, 1, 16, 17, 40, 8, 9, 100], 0),
                                                      (3, [1, 2, 7, 30, 31], 5), (16, [300, 7], 20)])
@pytest.mark.parametrize("softcap", [0.0, 1.5])
@pytest.mark.parametrize("portable", [False, True])
def test_the_f16_kernel_is_the_f32_kernel_on_the_same_values(n_head, n_head_kv, head_dim, block_size, lens,
                                                              window, softcap, portable):
    """Bit for bit (each element loaded as its exact float, then the same arithmetic), the F16C
    build and the portable one; and within float32 rounding of ops.decode_attention."""
    f16, f32 = caches(block_size, n_head_kv, head_dim, seed=head_dim)
    tables, context_lens = random_tables(lens, block_size, seed=len(lens)), np.array(lens)
    q = np.random.default_rng(7).standard_normal((len(lens), n_head, head_dim), dtype=np.float32) * 3
    starts = window_starts(lens, window) if window else None
    got = kernels.paged_decode_attention(q, f16.k[1], f16.v[1], tables, context_lens, 0.3, starts, softcap,
                                         f16_portable=portable)
    assert got.dtype == np.float32 and got.shape == q.shape
    assert np.array_equal(got, kernels.paged_decode_attention(q, f32.k[1], f32.v[1], tables, context_lens, 0.3,
                                                              starts, softcap))
    np.testing.assert_allclose(got, reference(f16, 1, q, tables, context_lens, 0.3, starts, softcap),
                               rtol=1e-5, atol=1e-5)


def test_writes_round_to_f16_and_reads_come_back_as_float32():
    cache = PagedKVCache(1, 4, 4, 2, 8, np.float16)
    rng = np.random.default_rng(1)
    k = rng.standard_normal((6, 2, 8), dtype=np.float32) * 1e3
    v = rng.standard_normal((6, 2, 8), dtype=np.float32) * 1e-3
    slots = np.array([0, 1, 2, 5, -1, 9])                   # a negative slot is not written
    cache.write(0, slots, k, v)
    k_read, v_read = cache.gather(0, [0, 1, 2], 10)
    assert k_read.dtype == v_read.dtype == np.float32
    kept = slots >= 0
    assert np.array_equal(k_read[slots[kept]], k[kept].astype(np.float16).astype(np.float32))
    assert np.array_equal(v_read[slots[kept]], v[kept].astype(np.float16).astype(np.float32))
    assert not np.array_equal(k_read[slots[kept]], k[kept])                 # rounded, not kept whole
    padded_k, _ = cache.gather_padded(0, np.array([[0, 1, 2]]))
    assert padded_k.dtype == np.float32 and np.array_equal(padded_k[0, :10], k_read)
    assert cache.nbytes == 2 * 4 * 4 * 2 * 8 * 2


def test_copies_keep_the_dtype_and_other_dtypes_are_refused():
    f16, _ = caches(4, 2, 8)
    assert PagedKVCache.like(f16, 3).k.dtype == np.float16
    f16.copy_blocks([(0, 5)])
    assert np.array_equal(f16.k[:, 5], f16.k[:, 0]) and f16.k.dtype == np.float16
    with pytest.raises(ValueError, match="float32 or float16"):
        PagedKVCache(1, 2, 4, 2, 8, np.int8)
    assert set(KV_CACHE_DTYPES) == {"f32", "f16"}


def test_without_the_extension_an_f16_cache_uses_the_numpy_reference(monkeypatch):
    lens = [20, 3, 9]
    f16, _ = caches(4, 2, 16)
    tables = random_tables(lens, 4, seed=6)
    q = np.random.default_rng(5).standard_normal((3, 4, 16), dtype=np.float32) * 2
    for window, softcap in ((0, 0.0), (6, 1.5)):
        compiled = f16.decode_attention(1, q, tables, np.array(lens), 0.25, window, softcap)
        monkeypatch.setattr(kernels, "COMPILED", False)
        fallback = f16.decode_attention(1, q, tables, np.array(lens), 0.25, window, softcap)
        monkeypatch.setattr(kernels, "COMPILED", True)
        assert fallback.dtype == np.float32
        np.testing.assert_allclose(compiled, fallback, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("f16kv") / "tiny.gguf", dtype="f32")


def test_the_budget_holds_twice_the_f16_blocks_and_the_model_answers_on_them(tiny_path):
    """kv_cache_mb counts 2 bytes an element for f16: twice the blocks of f32. The same prompt's
    next-token logits on either cache agree to F16's rounding of K/V, and differ (it is rounded)."""
    options = loader.EngineOptions(num_ctx=128, kv_cache_mb=1, max_running=2, max_batch_tokens=64)
    f32 = loader.load("tiny", tiny_path, loader.EngineOptions(**{**vars(options), "kv_cache_type": "f32"}),
                      SchedulerConfig())
    f16 = loader.load("tiny", tiny_path, options, SchedulerConfig())          # the default
    assert (f32.kv.k.dtype, f16.kv.k.dtype) == (np.float32, np.float16)
    assert f16.kv.num_blocks in (2 * f32.kv.num_blocks, 2 * f32.kv.num_blocks + 1)
    assert f16.kv.nbytes <= 1 << 20
    batch = Batch.pack([SeqChunk(list(range(5, 45)), 0, [0, 1, 2])])       # 40 tokens in 3 blocks of 16
    logits = [served.runner.model.forward(batch, served.kv)[0] for served in (f32, f16)]   # (n_vocab,) each
    assert not np.array_equal(logits[0], logits[1])
    np.testing.assert_allclose(logits[1], logits[0], atol=2e-2 * np.abs(logits[0]).max())
    assert int(np.argmax(logits[1])) == int(np.argmax(logits[0]))


def test_the_cuda_path_keeps_its_float32_cache_and_says_so(tiny_path, caplog):
    """kv_cache_type is the CPU path's: a device load keeps GpuKVCache's float32 (its budget
    counted at 4 bytes) and logs that the key did not apply (info: f16 is the default)."""
    from tests.cuda.test_gpu_model import mirror_ops
    options = loader.EngineOptions(num_ctx=64, kv_cache_mb=1, device="cuda", kv_cache_type="f16")
    with caplog.at_level(logging.INFO, logger="velollmd.engine"):
        served = loader.load("tiny", tiny_path, options, SchedulerConfig(), make_ops=mirror_ops)
    assert served.device == "cuda"
    on_cpu = loader.load("tiny", tiny_path, loader.EngineOptions(num_ctx=64, kv_cache_mb=1, kv_cache_type="f32"),
                         SchedulerConfig())
    assert served.kv.num_blocks == on_cpu.kv.num_blocks
    assert any("kv_cache_type applies to the CPU path" in record.getMessage() for record in caplog.records)
