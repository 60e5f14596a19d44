"""Each kernel's thread/block decomposition (cuda/mirror.py) against the dense references
(engine/ops.py, engine/quants.py, cuda/reference.py), on any machine.

Caches hold NaN in every slot no sequence owns, so reading past a length or outside a table
shows up as NaN in the output (and fails the error bound)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.cuda import cases
from velollmd.cuda import mirror, reference, sources
from velollmd.engine import ops, quants

# float32 sums in another order than numpy's BLAS: errors of a few ulps of the O(1) outputs
ATTENTION_BOUND = {np.float32: 1e-5, np.float16: 1e-5}   # f16 caches: the reference reads the same halves
LENS, max_error = cases.LENS, cases.max_error


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("head_dim,num_heads,num_kv_heads", [(64, 8, 2), (128, 8, 1), (96, 3, 3)],
                         ids=["d64-gqa4", "d128-gqa8", "d96-mha"])
@pytest.mark.parametrize("partition_size", [None, 32, 12], ids=["single", "partitions32", "partitions12"])
@pytest.mark.parametrize("tokens_per_warp", [1, 2, 4], ids=["u1", "u2", "u4"])
def test_paged_decode_matches_dense_attention(dtype, head_dim, num_heads, num_kv_heads, partition_size,
                                              tokens_per_warp, report_error):
    """LENS (1, 15, 16, 17, 203) and partitions of 12 leave tails that are not multiples of
    TOKENS_PER_WARP x NUM_WARPS (8 or 16 tokens per iteration of the block's warps)."""
    case = cases.paged_case(np.random.default_rng(head_dim), LENS, num_heads, num_kv_heads, head_dim,
                            block_size=16, dtype=dtype)
    got = mirror.paged_attention_decode(case.q, case.k_cache, case.v_cache, case.block_tables,
                                        case.context_lens, case.scale, partition_size,
                                        tokens_per_warp=tokens_per_warp)
    k = reference.dense_kv(case.k_cache, case.block_tables, case.context_lens)   # (B, max_len, kv, d)
    v = reference.dense_kv(case.v_cache, case.block_tables, case.context_lens)
    want = ops.decode_attention(case.q, k, v, case.context_lens, case.scale)
    what = f"paged decode d{head_dim} h{num_heads}/kv{num_kv_heads} partitions={partition_size} U={tokens_per_warp}"
    report_error(what, np.dtype(dtype).name, max_error(got, want), ATTENTION_BOUND[dtype])


@pytest.mark.parametrize("tokens_per_warp", [1, 2, 4])
def test_partition_merge_is_exact_to_rounding_whatever_the_split(tokens_per_warp):
    """A context split into 1-token partitions (every warp but one idle, the merge doing all the
    work) and into one partition give the same result."""
    case = cases.paged_case(np.random.default_rng(7), [37], 4, 2, 64, block_size=8, dtype=np.float32)
    args = (case.q, case.k_cache, case.v_cache, case.block_tables, case.context_lens, case.scale)
    assert max_error(mirror.paged_attention_decode(*args, partition_size=1, tokens_per_warp=tokens_per_warp),
                     mirror.paged_attention_decode(*args, tokens_per_warp=tokens_per_warp)) < 2e-6


def test_tokens_per_warp_one_update_for_several_tokens():
    """U = 4 makes one online-softmax update per 4 tokens of a warp: the same attention to
    rounding as one token at a time, but not the same float32 sums (a mirror that ignored U
    would give the U = 1 result bit for bit)."""
    case = cases.paged_case(np.random.default_rng(8), [203, 61], 8, 2, 128, block_size=16, dtype=np.float32)
    args = (case.q, case.k_cache, case.v_cache, case.block_tables, case.context_lens, case.scale)
    one, four = (mirror.paged_attention_decode(*args, tokens_per_warp=u) for u in (1, 4))
    assert not np.array_equal(one, four)
    assert max_error(one, four) < 2e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_prefill_matches_causal_attention(dtype, head_dim, report_error):
    case = cases.prefill_case(np.random.default_rng(head_dim + 1), query_lens=[1, 5, 13],
                              num_computed=[0, 7, 40], num_heads=4, num_kv_heads=2, head_dim=head_dim,
                              block_size=16, dtype=dtype)
    got = mirror.prefill_attention(case.q, case.k_cache, case.v_cache, case.query_start, case.context_lens,
                                   case.block_tables, case.scale)
    want = np.empty_like(case.q)
    for seq, length in enumerate(case.context_lens):
        rows = slice(case.query_start[seq], case.query_start[seq + 1])
        k = reference.sequence_kv(case.k_cache, case.block_tables, seq, length)   # (length, kv, d)
        v = reference.sequence_kv(case.v_cache, case.block_tables, seq, length)
        num_computed = int(length - (rows.stop - rows.start))
        want[rows] = ops.causal_attention(case.q[rows], k, v, num_computed, case.scale)
    report_error(f"prefill d{head_dim} packed 3 seqs with cached prefixes", np.dtype(dtype).name,
                 max_error(got, want), ATTENTION_BOUND[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
def test_cache_write_puts_rows_in_their_slots_and_skips_padding(dtype):
    rng = np.random.default_rng(3)
    key, value = rng.standard_normal((2, 5, 2, 64)).astype(np.float32)     # (T, kv, d) each
    slots = np.array([17, 3, -1, 40, 0], np.int64)
    want_k, want_v = np.full((2, 4, 16, 2, 64), np.nan, dtype)             # K and V caches (blocks, bs, kv, d)
    got_k, got_v = want_k.copy(), want_v.copy()
    reference.reshape_and_cache(want_k, want_v, key, value, slots)
    mirror.reshape_and_cache(got_k, got_v, key, value, slots)
    assert np.array_equal(got_k, want_k, equal_nan=True) and np.array_equal(got_v, want_v, equal_nan=True)
    assert np.isnan(got_k).sum() == got_k.size - 4 * 2 * 64                # the padded row wrote nothing
    assert np.array_equal(got_k.reshape(-1, 2, 64)[40], key[3].astype(dtype))


@pytest.mark.parametrize("dim", [128, 300, 4096])
def test_rms_norm(dim, report_error):
    rng = np.random.default_rng(dim)
    x = rng.standard_normal((3, dim)).astype(np.float32)
    weight = rng.standard_normal(dim).astype(np.float32)
    error = max_error(mirror.rms_norm(x, weight, 1e-6), ops.rms_norm(x, weight, 1e-6))
    report_error(f"rms_norm dim {dim}", "float32", error, 1e-5)


@pytest.mark.parametrize("style", ops.ROPE_STYLES)
@pytest.mark.parametrize("n_rot", [64, 32], ids=["full", "partial"])
def test_rope_both_pairings(style, n_rot, report_error):
    rng = np.random.default_rng(n_rot)
    x = rng.standard_normal((5, 3, 64)).astype(np.float32)                 # (T, heads, head_dim)
    cos, sin = ops.rope_cos_sin(np.array([0, 1, 2, 900, 32767]), ops.rope_inv_freq(n_rot, 10000.0))
    got = mirror.rope(x, cos, sin, neox=style == ops.ROPE_NEOX)
    want = ops.apply_rope(x, cos, sin, style)
    assert np.array_equal(got[..., n_rot:], x[..., n_rot:])
    report_error(f"rope {style} n_rot {n_rot}", "float32", max_error(got, want), 1e-6)


def test_rope_pairings_differ():
    """The two pairings are not interchangeable: a kernel run with the wrong one is caught."""
    x = np.random.default_rng(1).standard_normal((2, 1, 8)).astype(np.float32)
    cos, sin = ops.rope_cos_sin(np.array([3, 4]), ops.rope_inv_freq(8, 10000.0))
    assert max_error(mirror.rope(x, cos, sin, neox=True), mirror.rope(x, cos, sin, neox=False)) > 0.1


def test_silu_mul_and_embedding(report_error):
    rng = np.random.default_rng(5)
    gate_up = (4 * rng.standard_normal((3, 2 * 40))).astype(np.float32)    # (T, 2 * n_ff)
    want = ops.silu(gate_up[:, :40]) * gate_up[:, 40:]
    report_error("silu_mul", "float32", max_error(mirror.silu_mul(gate_up), want), 1e-6)
    table = rng.standard_normal((50, 24)).astype(np.float16)               # (n_vocab, n_embd)
    ids = np.array([49, 0, 7, 7])
    assert np.array_equal(mirror.embedding(table, ids), reference.embedding(table, ids))


@pytest.mark.parametrize("kind", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("rows", [1, 3, 8, 9, 40])
def test_matmul_gemv_and_tiled(kind, rows, report_error):
    """rows <= GEMV_MAX_ROWS take the GEMV kernel, more the tiled one; N = 70 leaves a partial tile."""
    num_out, k = 70, 256
    rng = np.random.default_rng(rows)
    weight = (0.1 * rng.standard_normal((num_out, k))).astype(np.float32)  # (N, K) as GGUF stores it
    raw = cases.weight_bytes(weight, kind)
    ggml_type = quants.GGML_TYPES[kind.upper()]
    x = rng.standard_normal((rows, k)).astype(np.float32)
    want = x @ quants.dequantize(raw, ggml_type, (num_out, k)).T           # (rows, N)
    kernel = mirror.gemv if rows <= sources.GEMV_MAX_ROWS else mirror.tiled_matmul
    got = kernel(x, raw, kind, num_out)
    report_error(f"matmul {kernel.__name__} rows {rows} N {num_out} K {k}", kind, max_error(got, want), 1e-5)


def test_f16_matmul_with_a_k_tail(report_error):
    """K = 100: the last 32-wide slice is part zeros (tiled), lanes past K idle (GEMV)."""
    rng = np.random.default_rng(11)
    weight = rng.standard_normal((33, 100)).astype(np.float32)
    raw = cases.f16_bytes(weight)
    for rows, kernel in ((2, mirror.gemv), (35, mirror.tiled_matmul)):
        x = rng.standard_normal((rows, 100)).astype(np.float32)
        want = x @ weight.astype(np.float16).astype(np.float32).T
        report_error(f"matmul {kernel.__name__} K tail 100", "f16", max_error(kernel(x, raw, "f16", 33), want),
                     1e-4)
