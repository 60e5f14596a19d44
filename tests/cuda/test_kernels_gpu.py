"""The real kernels on a GPU against the same references as the mirrors (skipped, with the
reason, where pycuda or a CUDA device is missing)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.cuda import cases
from tests.cuda.cases import LENS, max_error
from velollmd.cuda import kernels, reference, sources
from velollmd.engine import ops, quants

BOUND = {"attention": 5e-5, "elementwise": 1e-5, "matmul": 1e-4}   # expf and FMA differ from numpy by ulps


def test_probe_answers_without_raising():
    """Here or on a GPU machine: a verdict, and on no the reason (shown in the skips below)."""
    found = kernels.probe()
    assert isinstance(found.ok, bool) and found.detail


@pytest.fixture(scope="module")
def gpu():
    found = kernels.probe()
    if not found.ok:
        pytest.skip(f"real CUDA kernels not run: {found.detail}")
    import pycuda.driver as driver
    context = driver.Device(0).make_context()
    yield found.detail
    context.pop()


def to_gpu(array: np.ndarray):
    from pycuda import gpuarray
    return gpuarray.to_gpu(np.ascontiguousarray(array))


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("partition_size", [None, 32, 512], ids=["single", "partitions32", "partitions512"])
@pytest.mark.parametrize("tokens_per_warp", [1, 2, 4], ids=["u1", "u2", "u4"])
def test_paged_decode(gpu, dtype, partition_size, tokens_per_warp, report_error):
    case = cases.paged_case(np.random.default_rng(1), LENS + [1500], 8, 2, 128, block_size=16, dtype=dtype)
    built = kernels.Kernels(sources.engine_defines(128, 16, dtype == np.float16, 4, tokens_per_warp))
    got = built.paged_attention_decode(
        to_gpu(case.q), to_gpu(case.k_cache), to_gpu(case.v_cache), to_gpu(case.block_tables),
        to_gpu(case.context_lens), case.scale, int(case.context_lens.max()), partition_size).get()
    k = reference.dense_kv(case.k_cache, case.block_tables, case.context_lens)
    v = reference.dense_kv(case.v_cache, case.block_tables, case.context_lens)
    want = ops.decode_attention(case.q, k, v, case.context_lens, case.scale)
    report_error(f"GPU paged decode d128 gqa4 partitions={partition_size} U={tokens_per_warp}", np.dtype(dtype).name,
                 max_error(got, want), BOUND["attention"])


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
def test_cache_write_then_prefill(gpu, dtype, report_error):
    case = cases.prefill_case(np.random.default_rng(2), [1, 5, 70], [0, 7, 40], 4, 2, 64, 16, dtype)
    built = kernels.Kernels(sources.engine_defines(64, 16, dtype == np.float16, 2))
    k_cache, v_cache = to_gpu(case.k_cache), to_gpu(case.v_cache)
    rows = np.random.default_rng(3).standard_normal((2, 3, 2, 64)).astype(np.float32)
    slots = np.array([5, -1, 2], np.int64)                  # -1: padding, nothing written
    want_k, want_v = case.k_cache.copy(), case.v_cache.copy()
    reference.reshape_and_cache(want_k, want_v, rows[0], rows[1], slots)
    built.reshape_and_cache(k_cache, v_cache, to_gpu(rows[0]), to_gpu(rows[1]), to_gpu(slots))
    assert np.array_equal(k_cache.get(), want_k, equal_nan=True)
    assert np.array_equal(v_cache.get(), want_v, equal_nan=True)
    k_cache, v_cache = to_gpu(case.k_cache), to_gpu(case.v_cache)   # the prefill reads the case's own cache
    got = built.prefill_attention(to_gpu(case.q), k_cache, v_cache, to_gpu(case.query_start),
                                  to_gpu(case.context_lens), to_gpu(case.block_tables), case.scale,
                                  int(np.diff(case.query_start).max())).get()
    want = np.empty_like(case.q)
    for seq, length in enumerate(case.context_lens):
        rows_of = slice(case.query_start[seq], case.query_start[seq + 1])
        k = reference.sequence_kv(case.k_cache, case.block_tables, seq, length)
        v = reference.sequence_kv(case.v_cache, case.block_tables, seq, length)
        want[rows_of] = ops.causal_attention(case.q[rows_of], k, v, int(length - (rows_of.stop - rows_of.start)),
                                             case.scale)
    report_error("GPU prefill d64 packed 3 seqs", np.dtype(dtype).name, max_error(got, want), BOUND["attention"])


def test_layer_ops(gpu, report_error):
    rng = np.random.default_rng(4)
    built = kernels.Kernels()
    x = rng.standard_normal((3, 4096)).astype(np.float32)
    weight = rng.standard_normal(4096).astype(np.float32)
    out = to_gpu(np.empty_like(x))
    built.rms_norm(out, to_gpu(x), to_gpu(weight), 1e-6)
    report_error("GPU rms_norm 4096", "float32", max_error(out.get(), ops.rms_norm(x, weight, 1e-6)),
                 BOUND["elementwise"])
    heads = rng.standard_normal((4, 3, 64)).astype(np.float32)
    cos, sin = ops.rope_cos_sin(np.array([0, 5, 900, 32767]), ops.rope_inv_freq(64, 10000.0))
    for style in ops.ROPE_STYLES:
        rotated = to_gpu(heads)
        built.rope(rotated, to_gpu(cos), to_gpu(sin), neox=style == ops.ROPE_NEOX)
        report_error(f"GPU rope {style}", "float32", max_error(rotated.get(), ops.apply_rope(heads, cos, sin, style)),
                     BOUND["elementwise"])
    gate_up = (4 * rng.standard_normal((3, 80))).astype(np.float32)
    report_error("GPU silu_mul", "float32",
                 max_error(built.silu_mul(to_gpu(gate_up)).get(), ops.silu(gate_up[:, :40]) * gate_up[:, 40:]),
                 BOUND["elementwise"])
    table, ids = rng.standard_normal((50, 24)).astype(np.float16), np.array([49, 0, 7], np.int32)
    assert np.array_equal(built.embedding(to_gpu(table), to_gpu(ids)).get(), reference.embedding(table, ids))


@pytest.mark.parametrize("kind", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("rows", [1, 8, 40])
def test_matmul(gpu, kind, rows, report_error):
    rng = np.random.default_rng(rows)
    weight = (0.1 * rng.standard_normal((70, 256))).astype(np.float32)
    raw = cases.weight_bytes(weight, kind)
    x = rng.standard_normal((rows, 256)).astype(np.float32)
    want = x @ quants.dequantize(raw, quants.GGML_TYPES[kind.upper()], (70, 256)).T
    got = kernels.Kernels().matmul(to_gpu(x), to_gpu(raw), kind, 70).get()
    report_error(f"GPU matmul rows {rows}", kind, max_error(got, want), BOUND["matmul"])
