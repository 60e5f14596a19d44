"""Numpy replays of the CUDA kernels' thread/block decompositions, for machines without a GPU.

Each function walks the same grid, warps, lanes, tiles and partitions as its kernel, in float32,
with the same accumulation order where it matters (per-lane partial sums, butterfly warp sums,
online-softmax updates token by token, partition merges). The lanes of a warp (and the warps of
a block, which run independently) are numpy axes; grid blocks are Python loops. Tests compare
these with the references (engine/ops.py and cuda/reference.py), which checks the algorithm
(tails, masks, GQA grouping, merges) without compiling anything; on a GPU the kernels
themselves are compared with the same references.
"""
from __future__ import annotations

import numpy as np

from . import sources

WARP = 32
F32 = np.float32


def warp_sum(x: np.ndarray) -> np.ndarray:
    """common.cuh's warp_sum over the last axis (32 lanes): xor butterfly 16, 8, 4, 2, 1."""
    lanes = np.arange(WARP)
    for offset in (16, 8, 4, 2, 1):
        x = x + x[..., lanes ^ offset]
    return x[..., 0]


# ---- paged_attention.cu

def _kv_rows(cache: np.ndarray, table: np.ndarray, tokens: np.ndarray, kvh: int) -> np.ndarray:
    """kv_row + kv_load_row for a set of warps: (num_warps, 32 lanes, VPT) float32."""
    block_size, head_dim = cache.shape[1], cache.shape[3]
    rows = cache[table[tokens // block_size], tokens % block_size, kvh]   # (num_warps, head_dim)
    return rows.astype(F32).reshape(len(tokens), WARP, head_dim // WARP)


def _kv_rows_masked(cache: np.ndarray, table: np.ndarray, tokens: np.ndarray, live: np.ndarray,
                    kvh: int) -> np.ndarray:
    """The U rows of each warp in the loop, tokens and live (warps, U): (warps, U, lane, VPT),
    masked tokens not read (zeros, as the kernel sets its registers)."""
    vpt = cache.shape[3] // WARP
    rows = np.zeros((*tokens.shape, WARP, vpt), F32)
    rows[live] = _kv_rows(cache, table, tokens[live], kvh)
    return rows


def attend_tokens(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, table: np.ndarray,
                  seq: int, kvh: int, group: int, scale: float, start: int, stop: int,
                  num_warps: int = sources.NUM_WARPS,
                  tokens_per_warp: int = sources.TOKENS_PER_WARP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One thread block of paged attention over tokens [start, stop): merged (m, l, acc).

    Each iteration warp w takes tokens_per_warp (U) tokens of its stride, first + w + j *
    num_warps for j < U (those at or past stop masked), and makes one online-softmax update for
    them: l * corr + p_0 + p_1 ..., acc * corr + p_0 v_0 + p_1 v_1 ..., in that order.
    Returns m, l (group,) and the unnormalised acc (group, head_dim).
    """
    head_dim = q.shape[2]
    vpt = head_dim // WARP
    q_reg = (q[seq, kvh * group:(kvh + 1) * group] * F32(scale)).reshape(group, WARP, vpt)  # (g, lane, vpt)
    m = np.full((num_warps, group), -np.inf, F32)                     # (warps, g)
    l = np.zeros((num_warps, group), F32)                             # (warps, g)
    acc = np.zeros((num_warps, group, WARP, vpt), F32)                # (warps, g, lane, vpt)
    slots = num_warps * np.arange(tokens_per_warp)                    # (U,) token j's offset in a stride
    for first in range(start, stop, num_warps * tokens_per_warp):     # the warps step together
        tokens = first + np.arange(num_warps)[:, None] + slots        # (warps, U) tokens of each warp
        looping = tokens[:, 0] < stop                                 # a warp past stop has left its loop
        tokens = tokens[looping]
        live = tokens < stop                                          # (looping, U); token 0 always live
        k = _kv_rows_masked(k_cache, table, tokens, live, kvh)        # (looping, U, lane, vpt)
        v = _kv_rows_masked(v_cache, table, tokens, live, kvh)
        partial = np.zeros((*tokens.shape, group, WARP), F32)         # (looping, U, g, lane)
        for i in range(vpt):                                          # the lane's sequential dot
            partial = partial + q_reg[None, None, :, :, i] * k[:, :, None, :, i]
        score = np.where(live[..., None], warp_sum(partial), F32(-np.inf))   # (looping, U, g)
        m_new = np.maximum(m[looping], score.max(axis=1))             # (looping, g)
        corr = np.exp(m[looping] - m_new)
        p = np.where(live[..., None], np.exp(score - m_new[:, None]), F32(0))  # (looping, U, g)
        l_new = l[looping] * corr + p[:, 0]
        acc_new = acc[looping] * corr[..., None, None] + p[:, 0, :, None, None] * v[:, 0, None]
        for j in range(1, tokens_per_warp):
            l_new = l_new + p[:, j]
            acc_new = acc_new + p[:, j, :, None, None] * v[:, j, None]
        l[looping], acc[looping], m[looping] = l_new, acc_new, m_new
    return _merge(m, l, acc.reshape(num_warps, group, head_dim))


def _merge(m: np.ndarray, l: np.ndarray, acc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Online-softmax merge over the first axis (warps of a block, or partitions), in order.

    m, l (parts, g); acc (parts, g, head_dim). A part with m = -inf (no tokens) weighs 0.
    """
    m_all = np.max(m, axis=0)                                         # (g,)
    l_all = np.zeros_like(m_all)
    acc_all = np.zeros(acc.shape[1:], F32)                            # (g, head_dim)
    for part in range(m.shape[0]):
        weight = np.exp(m[part] - m_all)                              # (g,)
        l_all = l_all + l[part] * weight
        acc_all = acc_all + acc[part] * weight[:, None]
    return m_all, l_all, acc_all


def paged_attention_decode(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray,
                           block_tables: np.ndarray, context_lens: np.ndarray, scale: float,
                           partition_size: int | None = None, num_warps: int = sources.NUM_WARPS,
                           tokens_per_warp: int = sources.TOKENS_PER_WARP) -> np.ndarray:
    """q (num_seqs, num_heads, head_dim); caches (num_blocks, block_size, num_kv_heads, head_dim);
    block_tables (num_seqs, max_blocks); context_lens (num_seqs,). Returns (num_seqs, num_heads, head_dim).

    partition_size None: paged_attention_decode; else the partitioned kernel, then the reduce.
    """
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = np.empty_like(q)
    for seq in range(num_seqs):                                       # grid.y
        length = int(context_lens[seq])
        step = partition_size or length
        parts = [(start, min(start + step, length)) for start in range(0, length, step)]  # grid.z, live ones
        for kvh in range(num_kv_heads):                               # grid.x
            results = [attend_tokens(q, k_cache, v_cache, block_tables[seq], seq, kvh, group, scale,
                                     start, stop, num_warps, tokens_per_warp) for start, stop in parts]
            m, l, acc = (np.stack(field) for field in zip(*results))  # (parts, g), (parts, g), (parts, g, d)
            if partition_size is not None:
                m, l, acc = _merge(m, l, acc)                         # paged_attention_reduce
            else:
                m, l, acc = m[0], l[0], acc[0]
            out[seq, kvh * group:(kvh + 1) * group] = acc / l[:, None]
    return out


# ---- prefill_attention.cu

def prefill_attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, query_start: np.ndarray,
                      context_lens: np.ndarray, block_tables: np.ndarray, scale: float,
                      q_tile: int = sources.Q_TILE, kv_tile: int | None = None) -> np.ndarray:
    """q (num_tokens, num_heads, head_dim) packed; returns the same shape (see the kernel's comment)."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    group = num_heads // k_cache.shape[2]
    kv_tile = kv_tile or sources.kv_tile(head_dim)
    out = np.empty_like(q)
    for seq in range(len(context_lens)):                                      # grid.z
        query_len = int(query_start[seq + 1] - query_start[seq])
        for head in range(num_heads):                                         # grid.y
            for first_row in range(0, query_len, q_tile):                     # grid.x, live blocks
                rows = first_row + np.arange(q_tile)                          # (warps,)
                active = rows < query_len
                tokens = query_start[seq] + rows[active]
                acc, l = _prefill_block(q[tokens, head] * F32(scale), k_cache, v_cache, block_tables[seq],
                                        head // group, int(context_lens[seq]) - query_len,
                                        rows[active], kv_tile)
                out[tokens, head] = acc / l[:, None]
    return out


def _prefill_block(q_rows: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, table: np.ndarray,
                   kvh: int, num_computed: int, rows: np.ndarray, kv_tile: int) -> tuple[np.ndarray, np.ndarray]:
    """The active warps of one block: q_rows (warps, head_dim) scaled; returns acc (warps, d), l (warps,)."""
    num_warps, head_dim = q_rows.shape
    vpt = head_dim // WARP
    q_reg = q_rows.reshape(num_warps, WARP, vpt)
    positions = num_computed + rows                                    # (warps,)
    num_keys = int(positions.max()) + 1
    m, l = np.full(num_warps, -np.inf, F32), np.zeros(num_warps, F32)
    acc = np.zeros((num_warps, WARP, vpt), F32)
    for tile_start in range(0, num_keys, kv_tile):
        tokens = np.arange(tile_start, min(tile_start + kv_tile, num_keys))   # load_kv_tile
        s_k = _kv_rows(k_cache, table, tokens, kvh)                    # (tile, lane, vpt)
        s_v = _kv_rows(v_cache, table, tokens, kvh)
        for j, t in enumerate(tokens):
            live = t <= positions                                      # the causal mask, per warp
            partial = np.zeros((int(live.sum()), WARP), F32)
            for i in range(vpt):
                partial = partial + q_reg[live, :, i] * s_k[j, :, i]
            score = warp_sum(partial)                                  # (live,)
            m_new = np.maximum(m[live], score)
            corr, p = np.exp(m[live] - m_new), np.exp(score - m_new)
            l[live] = l[live] * corr + p
            acc[live] = acc[live] * corr[:, None, None] + p[:, None, None] * s_v[j]
            m[live] = m_new
    return acc.reshape(num_warps, head_dim), l


# ---- cache_write.cu, layer_ops.cu

def reshape_and_cache(k_cache: np.ndarray, v_cache: np.ndarray, key: np.ndarray, value: np.ndarray,
                      slot_mapping: np.ndarray, threads: int = 128) -> None:
    """In place; block `token` stores element i of the token's flat row at slot * row_len + i."""
    row_len = key.shape[1] * key.shape[2]
    flat_k, flat_v = k_cache.reshape(-1), v_cache.reshape(-1)         # views
    for token, slot in enumerate(slot_mapping):                       # grid
        if slot < 0:
            continue
        for first in range(0, row_len, threads):                      # the block's threads step together
            i = np.arange(first, min(first + threads, row_len))
            flat_k[slot * row_len + i] = key.reshape(len(key), -1)[token, i].astype(k_cache.dtype)
            flat_v[slot * row_len + i] = value.reshape(len(value), -1)[token, i].astype(v_cache.dtype)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float, threads: int = sources.NORM_THREADS) -> np.ndarray:
    """x (rows, dim): per-thread strided sums, warp butterflies, then warp 0 over the warp sums."""
    rows, dim = x.shape
    steps = -(-dim // threads)
    padded = np.zeros((rows, steps * threads), F32)
    padded[:, :dim] = x
    sum_sq = np.zeros((rows, threads), F32)                           # (rows, thread)
    for step in range(steps):
        chunk = padded[:, step * threads:(step + 1) * threads]
        sum_sq = sum_sq + chunk * chunk
    warp_sums = warp_sum(sum_sq.reshape(rows, threads // WARP, WARP))  # (rows, warps)
    lanes = np.zeros((rows, WARP), F32)
    lanes[:, :threads // WARP] = warp_sums
    total = warp_sum(lanes)                                           # (rows,)
    scale = F32(1) / np.sqrt(total / F32(dim) + F32(eps))
    return x * scale[:, None] * weight


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, neox: bool) -> np.ndarray:
    """x (T, num_heads, head_dim), cos/sin (T, n_rot/2): pair p -> (head p // half, i = p % half)."""
    num_tokens, num_heads, _ = x.shape
    half = cos.shape[1]
    out = x.copy()
    p = np.arange(num_heads * half)                                   # every thread's pairs
    head, i = p // half, p % half
    i0, i1 = (i, i + half) if neox else (2 * i, 2 * i + 1)
    c, s = cos[:, i], sin[:, i]                                       # (T, pairs)
    x0, x1 = x[:, head, i0], x[:, head, i1]
    out[:, head, i0] = x0 * c - x1 * s
    out[:, head, i1] = x0 * s + x1 * c
    return out


def silu_mul(gate_up: np.ndarray) -> np.ndarray:
    """Output i -> token i // n_ff, j = i % n_ff: gate / (1 + e^-gate) * up."""
    num_tokens, n_ff = gate_up.shape[0], gate_up.shape[1] // 2
    i = np.arange(num_tokens * n_ff)
    token, j = i // n_ff, i % n_ff
    gate, up = gate_up[token, j], gate_up[token, n_ff + j]
    return (gate / (F32(1) + np.exp(-gate)) * up).reshape(num_tokens, n_ff)


def embedding(table: np.ndarray, token_ids: np.ndarray) -> np.ndarray:
    return table[token_ids].astype(F32)


# ---- matmul.cu

def weight_at(raw: np.ndarray, kind: str, n: np.ndarray, k: np.ndarray, K: int) -> np.ndarray:
    """WeightF32/F16/Q8_0::at for broadcastable index arrays n, k over raw GGUF bytes."""
    if kind == "f32":
        return raw.view(np.float32)[n * K + k]
    if kind == "f16":
        return raw.view(np.float16)[n * K + k].astype(F32)
    block = (n * (K // 32) + k // 32) * 34                           # byte offset of block_q8_0
    d = (raw[block].astype(np.uint16) | raw[block + 1].astype(np.uint16) << 8).view(np.float16).astype(F32)
    return d * raw[block + 2 + k % 32].view(np.int8).astype(F32)


def gemv(x: np.ndarray, raw: np.ndarray, kind: str, N: int) -> np.ndarray:
    """x (M <= GEMV_MAX_ROWS, K); warp n (all at once) lanes over k = lane, lane + 32, ..."""
    M, K = x.shape
    assert M <= sources.GEMV_MAX_ROWS
    n = np.arange(N)[:, None]                                         # (N, 1) the warps
    acc = np.zeros((M, N, WARP), F32)                                 # (m, warp n, lane)
    for first in range(0, K, WARP):
        k = first + np.arange(WARP)[None, :]                          # (1, lane)
        live = k < K                                                  # lanes past K left the loop
        wk = np.where(live, weight_at(raw, kind, n, np.minimum(k, K - 1), K), F32(0))  # (N, lane)
        xk = np.where(live, x[:, np.minimum(k[0], K - 1)][:, None, :], F32(0))         # (m, 1, lane)
        acc = acc + xk * wk[None]
    return warp_sum(acc)                                              # (M, N)


def tiled_matmul(x: np.ndarray, raw: np.ndarray, kind: str, N: int) -> np.ndarray:
    """x (M, K): 32x32 output tiles (all at once), K walked in 32-wide zero-filled shared slices."""
    M, K = x.shape
    tile = sources.TILE
    m_pad, n_pad = -(-M // tile) * tile, -(-N // tile) * tile
    acc = np.zeros((m_pad, n_pad), F32)
    n = np.arange(n_pad)[:, None]
    for k0 in range(0, K, tile):
        k = k0 + np.arange(tile)[None, :]                             # (1, tile)
        s_x = np.zeros((m_pad, tile), F32)                            # s_x of every tile row
        live_k = k[0] < K
        s_x[:M, live_k] = x[:, k[0, live_k]]
        s_w = np.where((n < N) & (k < K), weight_at(raw, kind, np.minimum(n, N - 1), np.minimum(k, K - 1), K),
                       F32(0))                                        # (n_pad, tile)
        for kk in range(tile):
            acc = acc + s_x[:, kk, None] * s_w[None, :, kk]
    return acc[:M, :N]
