"""Numpy float32 building blocks of the forward pass: RMSNorm, RoPE, softmax, SiLU, attention.

Pure functions over arrays; each is the reference its CUDA twin is checked against. Names and
conventions follow llama.cpp (`freq_base`, `freq_scale`, rope "norm" vs "neox").
"""
from __future__ import annotations

import numpy as np

ROPE_NORM = "norm"   # llama: rotate adjacent pairs (x[2i], x[2i+1]) (the converter permuted Q/K)
ROPE_NEOX = "neox"   # qwen2/qwen3: rotate (x[i], x[i + n_rot/2]) (half split)
ROPE_STYLES = (ROPE_NORM, ROPE_NEOX)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x * weight / sqrt(mean(x^2) + eps) over the last axis; x (..., d), weight (d,)."""
    mean_sq = np.einsum("...d,...d->...", x, x) / np.float32(x.shape[-1])  # (...,)
    scale = 1.0 / np.sqrt(mean_sq + np.float32(eps))                       # (...,)
    return (x * scale[..., None]) * weight                                 # (..., d)


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x), float32."""
    return x / (1.0 + np.exp(-x))


GELU_COEF_A = np.float32(0.044715)
SQRT_2_OVER_PI = np.float32(0.79788456080286535587989211986876)


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU's tanh approximation as ggml's CPU backend computes it (gemma3's FFN): the input
    rounded to F16, the F16 result of its table, exact outside (-10, 10). float32 (..., d)."""
    x16 = x.astype(np.float16).astype(np.float32)
    table = (np.float32(0.5) * x16 * (1 + np.tanh(SQRT_2_OVER_PI * x16 * (1 + GELU_COEF_A * x16 * x16))))
    y = table.astype(np.float16).astype(np.float32)
    return np.where(x <= -10, np.float32(0), np.where(x >= 10, x, y))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (a new array); rows that are all -inf are not expected."""
    return softmax_(np.array(x, dtype=np.float32), axis)


def softmax_(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """softmax in place (x is a float32 temporary the caller owns): no large allocations."""
    x -= np.max(x, axis=axis, keepdims=True)
    np.exp(x, out=x)
    x *= 1.0 / np.sum(x, axis=axis, keepdims=True)
    return x


def rope_inv_freq(n_rot: int, freq_base: float, freq_scale: float = 1.0,
                  freq_factors: np.ndarray | None = None) -> np.ndarray:
    """Angle per position of each rotated pair: freq_scale * base^(-2i/n_rot) / factor_i.

    freq_scale is 1 / (linear scaling factor); freq_factors (n_rot/2,) are llama3-style
    per-dimension divisors (the `rope_freqs.weight` tensor).
    """
    exponents = np.arange(0, n_rot, 2, dtype=np.float64) / n_rot   # (n_rot/2,)
    inv_freq = freq_scale * freq_base ** -exponents                # (n_rot/2,)
    if freq_factors is not None:
        inv_freq = inv_freq / np.asarray(freq_factors, dtype=np.float64)
    return inv_freq


def rope_cos_sin(positions: np.ndarray, inv_freq: np.ndarray,
                 attn_factor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of position * inv_freq, each (T, n_rot/2) float32, times attn_factor (ggml's
    rope mscale: the rotated dims of Q and K both scaled by it; LongRoPE's attention factor)."""
    theta = np.outer(positions.astype(np.float64), inv_freq)  # (T, n_rot/2)
    return (np.cos(theta) * attn_factor).astype(np.float32), (np.sin(theta) * attn_factor).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, style: str) -> np.ndarray:
    """Rotate the first n_rot dims of x (T, num_heads, head_dim); cos/sin (T, n_rot/2).

    Dimensions past n_rot pass through unchanged. Returns a new array.
    """
    half = cos.shape[-1]
    n_rot = 2 * half
    out = x.copy()                                   # (T, num_heads, head_dim)
    c, s = cos[:, None, :], sin[:, None, :]          # (T, 1, n_rot/2)
    if style == ROPE_NORM:
        x0, x1 = x[..., 0:n_rot:2], x[..., 1:n_rot:2]          # (T, num_heads, n_rot/2) each
        out[..., 0:n_rot:2] = x0 * c - x1 * s
        out[..., 1:n_rot:2] = x0 * s + x1 * c
    elif style == ROPE_NEOX:
        x0, x1 = x[..., :half], x[..., half:n_rot]              # (T, num_heads, n_rot/2) each
        out[..., :half] = x0 * c - x1 * s
        out[..., half:n_rot] = x0 * s + x1 * c
    else:
        raise ValueError(f"rope style must be one of {ROPE_STYLES}, not {style!r}")
    return out


MAX_SCORES = 1 << 22   # causal_attention's query chunks hold at most this many scores (16 MiB)
QUERY_CHUNK = 64       # ... and at most this many queries: each chunk skips the keys after it


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, num_computed: int,
                     scale: float, window: int = 0, softcap: float = 0.0) -> np.ndarray:
    """Attention of one sequence's new tokens over its whole context, GQA without repeating heads.

    q (T, n_head, head_dim): the new tokens at positions num_computed .. num_computed + T - 1;
    k, v (num_computed + T, n_head_kv, head_dim): the cached prefix followed by the new tokens.
    Query head h reads KV head h // (n_head / n_head_kv), as llama.cpp broadcasts.
    Queries go in chunks, each over the keys up to its last query only (bounded memory, and
    most of the causal upper triangle is never computed). Returns (T, n_head, head_dim).
    window > 0 (a sliding-window layer, llama.cpp's standard SWA): a query at position p sees
    the keys at p - window + 1 .. p only; each chunk then also skips the keys before its window.
    softcap > 0 (gemma2): scores = softcap * tanh(scores / softcap) before the mask and softmax.
    """
    num_q, n_head, head_dim = q.shape
    num_k, n_head_kv, _ = k.shape
    group = n_head // n_head_kv
    q = q * np.float32(scale)                                                # (T, n_head, d) scaled
    qg = q.reshape(num_q, n_head_kv, group, head_dim).transpose(1, 0, 2, 3)  # (kv, T, group, d)
    # contiguous per KV head: one BLAS product covers the group's heads and the chunk's queries
    kc = np.ascontiguousarray(k.transpose(1, 0, 2))                          # (kv, num_k, d)
    vc = np.ascontiguousarray(v.transpose(1, 0, 2))                          # (kv, num_k, d)
    out = np.empty((n_head_kv, num_q, group, head_dim), dtype=np.float32)    # (kv, T, group, d)
    chunk = max(1, min(QUERY_CHUNK, MAX_SCORES // (n_head * num_k)))
    for start in range(0, num_q, chunk):
        stop = min(num_q, start + chunk)
        num_visible = num_computed + stop                                    # keys any query here sees
        first = max(0, num_computed + start - window + 1) if window else 0   # keys before: out of every window
        rows = qg[:, start:stop].reshape(n_head_kv, (stop - start) * group, head_dim)  # (kv, chunk*group, d)
        scores = np.matmul(rows, kc[:, first:num_visible].transpose(0, 2, 1))  # (kv, chunk*group, visible)
        if softcap:
            soft_cap_(scores, softcap)
        per_query = scores.reshape(n_head_kv, stop - start, group, num_visible - first)
        if window:
            per_query += _window_mask(num_computed + start, stop - start, first, num_visible, window)[:, None, :]
        elif stop - start > 1:     # only the chunk's own keys can be in a query's future
            per_query[..., num_computed + start:] += _future_mask(stop - start)[:, None, :]
        probs = softmax_(scores)                                             # (kv, chunk*group, visible)
        out[:, start:stop] = np.matmul(probs, vc[:, first:num_visible]).reshape(
            n_head_kv, stop - start, group, head_dim)
    return out.transpose(1, 0, 2, 3).reshape(num_q, n_head, head_dim)


def soft_cap_(scores: np.ndarray, cap: float) -> np.ndarray:
    """scores = cap * tanh(scores / cap) in place, as llama.cpp's graph computes it (a scale by
    1 / cap, tanh, a scale by cap): gemma2's attention and final logit soft-capping. Returns scores."""
    scores *= np.float32(1.0 / cap)
    np.tanh(scores, out=scores)
    scores *= np.float32(cap)
    return scores


def _future_mask(num: int) -> np.ndarray:
    """(num, num) float32: -inf above the diagonal (key j after query i), 0 elsewhere."""
    return np.triu(np.full((num, num), -np.inf, dtype=np.float32), k=1)


def _window_mask(first_query: int, num_queries: int, first_key: int, num_keys: int, window: int) -> np.ndarray:
    """(num_queries, num_keys - first_key) float32: -inf where key position j is after query
    position p or p - j >= window (llama.cpp's standard sliding window), 0 elsewhere."""
    query = np.arange(first_query, first_query + num_queries)[:, None]     # (Q, 1) positions
    key = np.arange(first_key, num_keys)[None, :]                          # (1, K) positions
    hidden = (key > query) | (query - key >= window)                       # (Q, K)
    return np.where(hidden, np.float32(-np.inf), np.float32(0))


def decode_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, context_lens: np.ndarray,
                     scale: float, starts: np.ndarray | None = None, softcap: float = 0.0) -> np.ndarray:
    """Attention of B sequences' single new tokens at once, over zero-padded contexts.

    q (B, n_head, head_dim); k, v (B, max_len, n_head_kv, head_dim), valid up to
    context_lens[b] (each >= 1, the new token included), and from starts[b] on when given (a
    sliding window's first key). softcap > 0: the scores soft-capped (soft_cap_) before the
    padding's mask. Returns (B, n_head, head_dim).
    """
    batch, n_head, head_dim = q.shape
    max_len, n_head_kv = k.shape[1], k.shape[2]
    group = n_head // n_head_kv
    q = q * np.float32(scale)                                                # (B, n_head, d) scaled
    qt = q.reshape(batch, n_head_kv, group, head_dim).transpose(0, 1, 3, 2)  # (B, kv, d, group)
    # K @ q^T keeps K's rows as BLAS reads them (q @ K^T over this layout is ~2x slower)
    scores = np.matmul(k.transpose(0, 2, 1, 3), qt).transpose(0, 1, 3, 2).copy()  # (B, kv, group, max_len)
    if softcap:
        soft_cap_(scores, softcap)
    padding = np.arange(max_len)[None, :] >= context_lens[:, None]           # (B, max_len)
    if starts is not None:
        padding |= np.arange(max_len)[None, :] < np.asarray(starts)[:, None]
    if padding.any():
        scores += np.where(padding, np.float32(-np.inf), np.float32(0))[:, None, None, :]
    out = np.matmul(softmax_(scores), v.transpose(0, 2, 1, 3))               # (B, kv, group, d)
    return out.reshape(batch, n_head, head_dim)
