/* See attention.h. The reference is ops.decode_attention over kvcache.gather_padded (numpy);
 * tests/engine/test_attention_kernel.py checks one against the other. */
#include "attention.h"

#include "vecf.h"

/* [x0 + x1, x2 + x3, y0 + y1, y2 + y3, x4 + x5, x6 + x7, y4 + y5, y6 + y7] (AVX's vhaddps). */
static inline __attribute__((always_inline)) v8f hadd(v8f x, v8f y) {
    return __builtin_shuffle(x, y, (v8i){0, 2, 8, 10, 4, 6, 12, 14})
         + __builtin_shuffle(x, y, (v8i){1, 3, 9, 11, 5, 7, 13, 15});
}

/* [hsum(a[0]), ..., hsum(a[7])], each lane summed in exactly hsum's order. */
static inline __attribute__((always_inline)) v8f hsum8(const v8f a[8]) {
    v8f x[4];
    for (int i = 0; i < 4; i++)      /* [a_i halves folded, a_{i+4} halves folded] */
        x[i] = __builtin_shuffle(a[i], a[i + 4], (v8i){0, 1, 2, 3, 8, 9, 10, 11})
             + __builtin_shuffle(a[i], a[i + 4], (v8i){4, 5, 6, 7, 12, 13, 14, 15});
    return hadd(hadd(x[0], x[1]), hadd(x[2], x[3]));
}

/* Scores of one query q (d) against 8 key rows k[0..7]: dot products (lanes over 8 k's, hsum,
 * then the scalar tail of d), times scale. */
static inline __attribute__((always_inline)) v8f dot8(const float *q, const float *const k[8], int64_t d,
                                                      float scale) {
    v8f acc[8] = {{0}};
    int64_t j = 0;
    for (; j + 8 <= d; j += 8) {
        v8f qv = load8(q + j);
        for (int i = 0; i < 8; i++)
            acc[i] += qv * load8(k[i] + j);
    }
    v8f sums = hsum8(acc);
    for (; j < d; j++)
        for (int i = 0; i < 8; i++)
            sums[i] += q[j] * k[i][j];
    v8f scales = {scale, scale, scale, scale, scale, scale, scale, scale};
    return sums * scales;
}

/* s[0..n) = exp(s - max) in place (8 lanes at a time, the last partial 8 on a padded copy);
 * returns 1 / their sum: weighted_v scales its sums by it (softmax = that product). */
static inline __attribute__((always_inline)) float softmax_unnormalised(float *s, int64_t n) {
    v8f vmax = {s[0], s[0], s[0], s[0], s[0], s[0], s[0], s[0]}, vsum = {0};
    int64_t t = 0;
    for (; t + 8 <= n; t += 8) {
        v8f x = load8(s + t);
        vmax = vmax8(x, vmax);
    }
    float max = s[0];
    for (int i = 0; i < 8; i++)
        max = vmax[i] > max ? vmax[i] : max;
    for (int64_t u = t; u < n; u++)
        max = s[u] > max ? s[u] : max;
    v8f m = {max, max, max, max, max, max, max, max};
    for (t = 0; t + 8 <= n; t += 8) {
        v8f e = exp8(load8(s + t) - m);
        store8(s + t, e);
        vsum += e;
    }
    if (t < n) {                                       /* the last partial 8: its valid lanes only */
        v8f x = m, e;
        memcpy(&x, s + t, (size_t)(n - t) * sizeof(float));
        e = exp8(x - m);
        for (int64_t i = 0; i < n - t; i++) {
            s[t + i] = e[i];
            vsum[i] += e[i];
        }
    }
    return 1.0f / hsum(vsum);
}

/* tanh(x) lane-wise: (1 - e) / (1 + e) with e = exp8(-2|x|) in (0, 1], the sign put back.
 * Near 0 its error is absolute (~1e-7, from 1 - e), not relative: soft-capped scores come out
 * within ~1e-7 * cap of tanhf's, far below what the softmax after them resolves. */
static inline __attribute__((always_inline)) v8f tanh8(v8f x) {
    const v8i sign_bit = {INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN};
    v8i sign = (v8i)x & sign_bit;
    v8f e = exp8(2.0f * (v8f)((v8i)x | sign_bit));     /* e^-2|x|: -|x| is x with its sign bit set */
    return (v8f)((v8i)((1.0f - e) / (1.0f + e)) | sign);
}

/* Geometry of one call: what every (sequence, KV head) unit needs besides its own pointers.
 * softcap > 0 (gemma2): every score becomes softcap * tanh(score / softcap) (ops.soft_cap_'s
 * order: a scale by 1 / softcap, tanh, a scale by softcap). */
typedef struct {
    int64_t group, n_head_kv, head_dim, block_size;
    float scale, softcap, softcap_inv;                 /* softcap_inv: 1 / softcap rounded once, as numpy's */
} shape_t;

/* The 8 scores soft-capped when CAP (a constant: unit_scores is built twice, with and without). */
static inline __attribute__((always_inline)) v8f capped(const shape_t *s, v8f scores, const int CAP) {
    if (!CAP)
        return scores;
    return tanh8(scores * s->softcap_inv) * s->softcap;
}

/* Where position t's K (or V) row for KV head h starts, as floats into the layer's pages. */
static inline __attribute__((always_inline)) int64_t row_of(const shape_t *s, const int64_t *table,
                                                            int64_t t, int64_t h) {
    int64_t slot = table[t / s->block_size] * s->block_size + t % s->block_size;
    return (slot * s->n_head_kv + h) * s->head_dim;
}

/* Pointers to the K (or V) rows of KV head h at positions t0 .. t0 + 7, the ones past len
 * repeating the last valid row. One division for the 8 (the first position's block). */
static inline __attribute__((always_inline)) void rows8(const shape_t *s, const float *cache,
                                                        const int64_t *table, int64_t t0, int64_t len,
                                                        int64_t h, const float *rows[8]) {
    int64_t step = s->n_head_kv * s->head_dim;            /* floats from one slot to the next */
    int64_t valid = len - t0 < 8 ? len - t0 : 8, left = s->block_size - t0 % s->block_size;
    rows[0] = cache + row_of(s, table, t0, h);
    for (int i = 1; i < 8; i++) {                          /* the next slot, or the next block's first */
        if (i < valid && --left == 0)
            left = s->block_size;
        rows[i] = i >= valid ? rows[i - 1] : left == s->block_size ? cache + row_of(s, table, t0 + i, h)
                                                                   : rows[i - 1] + step;
    }
}

/* Ask for head_dim floats at each of the 8 rows (one request per 64-byte line). */
static inline __attribute__((always_inline)) void prefetch8(const float *const rows[8], int64_t d) {
    for (int i = 0; i < 8; i++)
        for (int64_t j = 0; j < d; j += 16)
            __builtin_prefetch(rows[i] + j, 0, 3);
}

#define AHEAD 16    /* positions between the rows computed on and the rows prefetched */

/* rows8 for t0, after a prefetch of the rows AHEAD positions on (the pages are scattered: the
 * hardware prefetcher sees a stride for a block's few rows only); how many of the 8 are valid.
 * KV head 0 prefetches whole slots (every KV head's row: one contiguous run), so that the
 * sequence's other heads, computed next on this thread, find their rows in cache. */
static inline __attribute__((always_inline)) int64_t rows8_ahead(const shape_t *s, const float *cache,
                                                                 const int64_t *table, int64_t t0, int64_t len,
                                                                 int64_t h, const float *rows[8]) {
    if (t0 + AHEAD < len) {
        rows8(s, cache, table, t0 + AHEAD, len, h, rows);
        prefetch8(rows, h == 0 ? s->n_head_kv * s->head_dim : s->head_dim);
    }
    rows8(s, cache, table, t0, len, h, rows);
    return len - t0 < 8 ? len - t0 : 8;
}

/* Prefetch the n rows of one block's run of a KV head from `row` on (step floats apart), whole. */
static inline __attribute__((always_inline)) void prefetch_run(const float *row, int64_t n, int64_t step,
                                                               int64_t d) {
    for (int64_t i = 0; i < n; i++, row += step)
        for (int64_t j = 0; j < d; j += 16)
            __builtin_prefetch(row + j, 0, 3);
}

/* How many of positions [t, len) lie in t's block (a run of consecutive slots in one page). */
static inline __attribute__((always_inline)) int64_t run_of(const shape_t *s, int64_t t, int64_t len) {
    int64_t n = s->block_size - t % s->block_size;
    return len - t < n ? len - t : n;
}

/* scores[g][t - first] for the group's queries over positions [first, len), 8 positions at a
 * time (a last partial 8 repeats its last row and keeps the valid lanes only: one code path for
 * every score), soft-capped when CAP; then a prefetch of the first block's V rows. Positions
 * before first (a sliding window's) are never read, their blocks included. */
static inline __attribute__((always_inline)) void unit_scores(const shape_t *s, const float *q,
                                                              const float *k_cache, const float *v_cache,
                                                              const int64_t *table, int64_t first, int64_t len,
                                                              int64_t h, float *scores, int64_t stride,
                                                              const int CAP) {
    const float *k[8];
    for (int64_t t0 = first; t0 < len; t0 += 8) {
        int64_t valid = rows8_ahead(s, k_cache, table, t0, len, h, k);
        for (int64_t g = 0; g < s->group; g++) {
            v8f sums = capped(s, dot8(q + g * s->head_dim, k, s->head_dim, s->scale), CAP);
            float *row = scores + g * stride + (t0 - first);
            if (valid == 8)
                store8(row, sums);
            else
                for (int64_t i = 0; i < valid; i++)
                    row[i] = sums[i];
        }
    }
    prefetch_run(v_cache + row_of(s, table, first, h), run_of(s, first, len),
                 s->n_head_kv * s->head_dim, h == 0 ? s->n_head_kv * s->head_dim : s->head_dim);       /* the first V block, for weighted_v */
}

/* out[g][j0 .. j0 + 8 * COLS) for the NG queries g of p (rows stride apart, p[g][0] position
 * first's) = sum over t (in order, from first) of p[g][t - first] * V[t] there: each V load
 * serves the NG queries. */
static inline __attribute__((always_inline)) void weighted_v(const shape_t *s, const float *p, int64_t stride,
                                                             const float *v_cache, const int64_t *table,
                                                             int64_t first, int64_t len, int64_t h, int64_t j0,
                                                             const int NG, const int COLS, const float *inv,
                                                             float *out) {
    v8f acc[4][2] = {{{0}}};
    int64_t step = s->n_head_kv * s->head_dim;
    for (int64_t t0 = first, t1; t0 < len; t0 = t1) {
        const float *v = v_cache + row_of(s, table, t0, h) + j0;
        int64_t n = run_of(s, t0, len);
        t1 = t0 + n;
        if (j0 == 0 && t1 < len)         /* the first pass brings the next block's rows in whole */
            prefetch_run(v_cache + row_of(s, table, t1, h), run_of(s, t1, len), step, h == 0 ? step : s->head_dim);
        for (int64_t i = 0; i < n; i++, v += step) {
            v8f x[2];
            for (int c = 0; c < COLS; c++)
                x[c] = load8(v + 8 * c);
            for (int g = 0; g < NG; g++) {
                float pt = p[g * stride + (t0 - first) + i];
                v8f pv = {pt, pt, pt, pt, pt, pt, pt, pt};
                for (int c = 0; c < COLS; c++)
                    acc[g][c] += pv * x[c];
            }
        }
    }
    for (int g = 0; g < NG; g++) {
        v8f scale = {inv[g], inv[g], inv[g], inv[g], inv[g], inv[g], inv[g], inv[g]};
        for (int c = 0; c < COLS; c++)
            store8(out + g * s->head_dim + j0 + 8 * c, acc[g][c] * scale);
    }
}

/* weighted_v over every column of the NG queries: 16 columns a pass (one 64-byte line of each
 * row), then 8, then the scalar rest. */
static inline __attribute__((always_inline)) void weighted_v_all(const shape_t *s, const float *p, int64_t stride,
                                                                 const float *v_cache, const int64_t *table,
                                                                 int64_t first, int64_t len, int64_t h, const int NG,
                                                                 const float *inv, float *out) {
    int64_t d = s->head_dim, j = 0;
    for (; j + 16 <= d; j += 16)
        weighted_v(s, p, stride, v_cache, table, first, len, h, j, NG, 2, inv, out);
    for (; j + 8 <= d; j += 8)
        weighted_v(s, p, stride, v_cache, table, first, len, h, j, NG, 1, inv, out);
    for (; j < d; j++)
        for (int g = 0; g < NG; g++) {
            float sum = 0.0f;
            for (int64_t t = first; t < len; t++)
                sum += p[g * stride + (t - first)] * v_cache[row_of(s, table, t, h) + j];
            out[g * d + j] = sum * inv[g];
        }
}

/* One sequence's `group` query heads q (group, head_dim) over KV head `h` of its positions
 * [first, len) (pages from `table`); scores (group, stride) scratch, out (group, head_dim). */
VL_CLONES
static void attend(const shape_t *s, const float *q, const float *k_cache, const float *v_cache,
                   const int64_t *table, int64_t first, int64_t len, int64_t h, float *scores,
                   int64_t stride, float *out) {
    int64_t d = s->head_dim;
    if (s->softcap > 0.0f)
        unit_scores(s, q, k_cache, v_cache, table, first, len, h, scores, stride, 1);
    else
        unit_scores(s, q, k_cache, v_cache, table, first, len, h, scores, stride, 0);
    float inv[s->group];                               /* 1 / each query's sum of exponentials */
    for (int64_t g = 0; g < s->group; g++)
        inv[g] = softmax_unnormalised(scores + g * stride, len - first);
    int64_t g = 0;
    for (; g + 4 <= s->group; g += 4)
        weighted_v_all(s, scores + g * stride, stride, v_cache, table, first, len, h, 4, inv + g, out + g * d);
    switch (s->group - g) {
    case 3: weighted_v_all(s, scores + g * stride, stride, v_cache, table, first, len, h, 3, inv + g, out + g * d); break;
    case 2: weighted_v_all(s, scores + g * stride, stride, v_cache, table, first, len, h, 2, inv + g, out + g * d); break;
    case 1: weighted_v_all(s, scores + g * stride, stride, v_cache, table, first, len, h, 1, inv + g, out + g * d); break;
    }
}

void vl_decode_attention(const float *q, const float *k_cache, const float *v_cache,
                         const int64_t *block_tables, const int64_t *context_lens, const int64_t *starts,
                         float *scores, float *out, int64_t B, int64_t n_head, int64_t n_head_kv,
                         int64_t head_dim, int64_t block_size, int64_t max_blocks, float scale, float softcap,
                         int num_threads) {
    shape_t s = {n_head / n_head_kv, n_head_kv, head_dim, block_size, scale, softcap,
                 softcap > 0.0f ? (float)(1.0 / (double)softcap) : 0.0f};
    int64_t stride = max_blocks * block_size, units = B * n_head_kv;
    if (num_threads < 1)
        num_threads = 1;
#pragma omp parallel for schedule(static) num_threads(num_threads) if (num_threads > 1 && units > 1)
    for (int64_t unit = 0; unit < units; unit++) {
        int64_t b = unit / n_head_kv, h = unit % n_head_kv;
        int64_t first = b * n_head + h * s.group;        /* this unit's first query head */
        attend(&s, q + first * head_dim, k_cache, v_cache, block_tables + b * max_blocks,
               starts ? starts[b] : 0, context_lens[b], h, scores + first * stride, stride, out + first * head_dim);
    }
}
