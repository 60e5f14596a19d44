"""Each op of velollmd/engine/ops.py against a straightforward dense numpy reference."""
from __future__ import annotations

import numpy as np
import pytest

from velollmd.engine import ops

RNG = np.random.default_rng(1234)


def randn(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


def test_rms_norm_matches_the_formula_row_by_row():
    x, weight = randn(5, 3, 16), randn(16)  # (5, 3, 16), (16,)
    out = ops.rms_norm(x, weight, 1e-5)
    for row in np.ndindex(5, 3):
        vec = x[row].astype(np.float64)
        expected = vec / np.sqrt(np.mean(vec * vec) + 1e-5) * weight
        np.testing.assert_allclose(out[row], expected, rtol=1e-5, atol=1e-6)
    assert out.dtype == np.float32


def test_silu_and_softmax_match_their_definitions():
    x = randn(4, 7) * 5  # (4, 7)
    np.testing.assert_allclose(ops.silu(x), x / (1 + np.exp(-x.astype(np.float64))), rtol=1e-5, atol=1e-6)
    exp = np.exp(x.astype(np.float64))
    np.testing.assert_allclose(ops.softmax(x.copy()), exp / exp.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
    huge = np.array([[1000.0, 1000.0, -np.inf]], dtype=np.float32)  # no overflow, -inf -> 0
    np.testing.assert_allclose(ops.softmax(huge), [[0.5, 0.5, 0.0]])


def complex_rope(x: np.ndarray, positions: np.ndarray, theta: np.ndarray, style: str,
                 n_rot: int) -> np.ndarray:
    """Reference: each rotated pair as one complex number times e^(i * pos * theta_j)."""
    half = n_rot // 2
    if style == "norm":
        z = x[..., 0:n_rot:2] + 1j * x[..., 1:n_rot:2]      # (T, H, n_rot/2)
    else:
        z = x[..., :half] + 1j * x[..., half:n_rot]
    z = z * np.exp(1j * positions[:, None, None] * theta[None, None, :])
    out = x.astype(np.float64)
    if style == "norm":
        out[..., 0:n_rot:2], out[..., 1:n_rot:2] = z.real, z.imag
    else:
        out[..., :half], out[..., half:n_rot] = z.real, z.imag
    return out


@pytest.mark.parametrize("style", ["norm", "neox"])
@pytest.mark.parametrize("n_rot", [32, 16])
def test_rope_matches_complex_rotation(style, n_rot):
    x, positions = randn(6, 3, 32), np.array([0, 1, 2, 7, 100, 4000])  # (T, H, head_dim), (T,)
    inv_freq = ops.rope_inv_freq(n_rot, 10000.0)
    cos, sin = ops.rope_cos_sin(positions, inv_freq)
    theta = 10000.0 ** (-np.arange(0, n_rot, 2) / n_rot)
    expected = complex_rope(x, positions, theta, style, n_rot)
    np.testing.assert_allclose(ops.apply_rope(x, cos, sin, style), expected, rtol=1e-4, atol=2e-5)


def test_rope_styles_differ_and_unknown_style_is_refused():
    x = randn(3, 2, 8)
    cos, sin = ops.rope_cos_sin(np.arange(3), ops.rope_inv_freq(8, 10000.0))
    assert not np.allclose(ops.apply_rope(x, cos, sin, "norm"), ops.apply_rope(x, cos, sin, "neox"))
    with pytest.raises(ValueError, match="rope style"):
        ops.apply_rope(x, cos, sin, "gptj")


def test_rope_inv_freq_applies_linear_scale_and_llama3_factors():
    factors = np.array([1.0, 2.0, 4.0, 8.0])
    inv_freq = ops.rope_inv_freq(8, 500000.0, freq_scale=0.25, freq_factors=factors)
    expected = [0.25 * 500000.0 ** (-i / 8) / f for i, f in zip((0, 2, 4, 6), factors)]
    np.testing.assert_allclose(inv_freq, expected, rtol=1e-12)


def dense_attention(q, k, v, num_computed, scale, window=0, softcap=0.0):
    """Reference: KV heads repeated to n_head, one (query, head) at a time, causal; with a
    window, over the last `window` keys only; with softcap, scores = softcap * tanh(scores / softcap)."""
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # (num_k, n_head, d)
    out = np.zeros(q.shape, dtype=np.float64)
    for t, head in np.ndindex(q.shape[0], q.shape[1]):
        visible = num_computed + t + 1
        first = max(0, visible - window) if window else 0
        scores = k[first:visible, head] @ q[t, head] * scale           # (visible - first,)
        if softcap:
            scores = softcap * np.tanh(scores / softcap)
        probs = np.exp(scores - scores.max())
        out[t, head] = probs / probs.sum() @ v[first:visible, head]
    return out


@pytest.mark.parametrize("num_computed, num_q", [(0, 1), (0, 7), (5, 4), (9, 1)])
def test_causal_gqa_attention_matches_repeated_heads(num_computed, num_q):
    q = randn(num_q, 8, 16)                                                   # (T, n_head, d)
    k, v = randn(num_computed + num_q, 2, 16), randn(num_computed + num_q, 2, 16)  # (num_k, kv, d)
    out = ops.causal_attention(q, k, v, num_computed, 0.25)
    np.testing.assert_allclose(out, dense_attention(q, k, v, num_computed, 0.25), rtol=1e-4, atol=1e-5)


def test_decode_attention_of_padded_batch_matches_one_sequence_at_a_time():
    context_lens = np.array([3, 11, 1, 8])                                  # (B,)
    q, k, v = randn(4, 6, 8), randn(4, 12, 3, 8) * 3, randn(4, 12, 3, 8)    # padding holds junk
    out = ops.decode_attention(q, k, v, context_lens, 0.3)                  # (B, n_head, d)
    for b, length in enumerate(context_lens):
        expected = dense_attention(q[b:b + 1], k[b, :length], v[b, :length], length - 1, 0.3)[0]
        np.testing.assert_allclose(out[b], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("window", [0, 3])
def test_causal_attention_soft_caps_its_scores(window):
    """gemma2's attention logit soft-capping, alone and with a sliding window, as the reference."""
    q, k, v = randn(7, 8, 16) * 3, randn(12, 2, 16) * 3, randn(12, 2, 16)     # 5 cached + 7 new
    capped = ops.causal_attention(q, k, v, 5, 0.25, window, softcap=2.0)
    np.testing.assert_allclose(capped, dense_attention(q, k, v, 5, 0.25, window, 2.0), rtol=1e-4, atol=1e-5)
    assert np.abs(capped - ops.causal_attention(q, k, v, 5, 0.25, window)).max() > 0.1   # the cap matters here


def test_decode_attention_soft_caps_within_its_window():
    context_lens, starts = np.array([3, 11, 1, 8]), np.array([0, 6, 0, 2])  # (B,) each
    q, k, v = randn(4, 6, 8) * 3, randn(4, 12, 3, 8) * 3, randn(4, 12, 3, 8)
    out = ops.decode_attention(q, k, v, context_lens, 0.3, starts, softcap=1.5)   # (B, n_head, d)
    for b, (length, start) in enumerate(zip(context_lens, starts)):
        expected = dense_attention(q[b:b + 1], k[b, start:length], v[b, start:length], length - start - 1,
                                   0.3, softcap=1.5)[0]
        np.testing.assert_allclose(out[b], expected, rtol=1e-4, atol=1e-5)


def test_soft_cap_is_llama_cpps_scale_tanh_scale():
    scores = np.array([-200.0, -3.0, 0.0, 0.5, 40.0], dtype=np.float32)
    np.testing.assert_allclose(ops.soft_cap_(scores.copy(), 30.0), 30.0 * np.tanh(scores / 30.0), rtol=1e-6)
    assert ops.soft_cap_(scores.copy(), 30.0).max() < 30.0


def test_causal_attention_in_query_chunks_equals_one_chunk(monkeypatch):
    q, k, v = randn(13, 4, 8), randn(18, 2, 8), randn(18, 2, 8)            # 5 cached + 13 new
    whole = ops.causal_attention(q, k, v, 5, 0.35)
    monkeypatch.setattr(ops, "MAX_SCORES", 4 * 18 * 3)                      # chunks of 3 queries
    np.testing.assert_allclose(ops.causal_attention(q, k, v, 5, 0.35), whole, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(whole, dense_attention(q, k, v, 5, 0.35), rtol=1e-4, atol=1e-5)
