/* See attention.h. The reference is ops.decode_attention over kvcache.gather_padded (numpy);
 * tests/engine/test_attention_kernel.py checks one against the other. */
#include "attention.h"

#include "vecf.h"

/* The K/V element type: float here; attention_f16.c includes this file with KV_T _Float16, its
 * own load_kv8 (8 elements as 8 floats, exactly) and KV_NAME for its entry points' names. */
#ifndef KV_T
#define KV_T float
#define KV_NAME(name) name
static inline __attribute__((always_inline)) v8f load_kv8(const float *p) {
    return load8(p);
}
#endif

#define KV_PER_LINE ((int64_t)(64 / sizeof(KV_T)))   /* K/V elements in a 64-byte line: one prefetch each */

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
static inline __attribute__((always_inline)) v8f dot8(const float *q, const KV_T *const k[8], int64_t d,
                                                      float scale) {
    v8f acc[8] = {{0}};
    int64_t j = 0;
    for (; j + 8 <= d; j += 8) {
        v8f qv = load8(q + j);
        for (int i = 0; i < 8; i++)
            acc[i] += qv * load_kv8(k[i] + j);
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

/* Where position t's K (or V) row for KV head h starts, as elements into the layer's pages. */
static inline __attribute__((always_inline)) int64_t row_of(const shape_t *s, const int64_t *table,
                                                            int64_t t, int64_t h) {
    int64_t slot = table[t / s->block_size] * s->block_size + t % s->block_size;
    return (slot * s->n_head_kv + h) * s->head_dim;
}

/* Pointers to the K (or V) rows of KV head h at positions t0 .. t0 + 7, the ones past len
 * repeating the last valid row. One division for the 8 (the first position's block). */
static inline __attribute__((always_inline)) void rows8(const shape_t *s, const KV_T *cache,
                                                        const int64_t *table, int64_t t0, int64_t len,
                                                        int64_t h, const KV_T *rows[8]) {
    int64_t step = s->n_head_kv * s->head_dim;            /* elements from one slot to the next */
    int64_t valid = len - t0 < 8 ? len - t0 : 8, left = s->block_size - t0 % s->block_size;
    rows[0] = cache + row_of(s, table, t0, h);
    for (int i = 1; i < 8; i++) {                          /* the next slot, or the next block's first */
        if (i < valid && --left == 0)
            left = s->block_size;
        rows[i] = i >= valid ? rows[i - 1] : left == s->block_size ? cache + row_of(s, table, t0 + i, h)
                                                                   : rows[i - 1] + step;
    }
}

/* Ask for head_dim elements at each of the 8 rows (one request per 64-byte line). */
static inline __attribute__((always_inline)) void prefetch8(const KV_T *const rows[8], int64_t d) {
    for (int i = 0; i < 8; i++)
        for (int64_t j = 0; j < d; j += KV_PER_LINE)
            __builtin_prefetch(rows[i] + j, 0, 3);
}

#ifndef AHEAD
#define AHEAD 8     /* positions between the rows computed on and the rows prefetched (8 and 16 measured: 8 a few % faster cold) */
#endif

/* A unit: one sequence's KV heads [h0, h0 + nh) (a slot holds every KV head's row side by side:
 * these nh rows are one contiguous run of nh * head_dim elements). A unit walks its positions
 * once, reading each slot's run once for all its heads (K for the scores, then V), so that a
 * sequence's pages are streamed once per unit: once per step with every head in one unit. */
typedef struct {
    int64_t h0, nh;
} heads_t;

/* rows8 for t0 (head h0's rows), after a prefetch of the unit's rows AHEAD positions on (the
 * pages are scattered: the hardware prefetcher sees a stride for a block's few rows only); how
 * many of the 8 are valid. */
static inline __attribute__((always_inline)) int64_t rows8_ahead(const shape_t *s, const KV_T *cache,
                                                                 const int64_t *table, int64_t t0, int64_t len,
                                                                 heads_t u, const KV_T *rows[8]) {
    if (t0 + AHEAD < len) {
        rows8(s, cache, table, t0 + AHEAD, len, u.h0, rows);
        prefetch8(rows, u.nh * s->head_dim);
    }
    rows8(s, cache, table, t0, len, u.h0, rows);
    return len - t0 < 8 ? len - t0 : 8;
}

/* Prefetch the n rows of one block's run of a KV head from `row` on (step elements apart), whole. */
static inline __attribute__((always_inline)) void prefetch_run(const KV_T *row, int64_t n, int64_t step,
                                                               int64_t d) {
    for (int64_t i = 0; i < n; i++, row += step)
        for (int64_t j = 0; j < d; j += KV_PER_LINE)
            __builtin_prefetch(row + j, 0, 3);
}

#ifndef VRUN
#define VRUN 8      /* positions of V a pass over the unit's heads covers (4, 8, 16 measured: 8 fastest cold) */
#endif

/* How many of positions [t, len) lie in t's block (a run of consecutive slots in one page), at
 * most VRUN. */
static inline __attribute__((always_inline)) int64_t run_of(const shape_t *s, int64_t t, int64_t len) {
    int64_t n = s->block_size - t % s->block_size;
    n = n < VRUN ? n : VRUN;
    return len - t < n ? len - t : n;
}

/* scores[q][t - first] for the unit's query heads q (head h's group: h * group .. + group, from
 * the unit's first) over positions [first, len), 8 positions at a time (a last partial 8 repeats
 * its last row and keeps the valid lanes only: one code path for every score), soft-capped when
 * CAP: the 8 slots' runs read once, every head's scores from them; then a prefetch of the first
 * V run. Positions before first (a sliding window's) are never read, their blocks included. */
static inline __attribute__((always_inline)) void unit_scores(const shape_t *s, const float *q,
                                                              const KV_T *k_cache, const KV_T *v_cache,
                                                              const int64_t *table, int64_t first, int64_t len,
                                                              heads_t u, float *scores, int64_t stride,
                                                              const int CAP) {
    const KV_T *rows[8], *k[8];
    int64_t d = s->head_dim;
    for (int64_t t0 = first; t0 < len; t0 += 8) {
        int64_t valid = rows8_ahead(s, k_cache, table, t0, len, u, rows);
        for (int64_t h = 0; h < u.nh; h++) {
            for (int i = 0; i < 8; i++)
                k[i] = rows[i] + h * d;
            for (int64_t g = h * s->group; g < (h + 1) * s->group; g++) {
                v8f sums = capped(s, dot8(q + g * d, k, d, s->scale), CAP);
                float *row = scores + g * stride + (t0 - first);
                if (valid == 8)
                    store8(row, sums);
                else
                    for (int64_t i = 0; i < valid; i++)
                        row[i] = sums[i];
            }
        }
    }
    prefetch_run(v_cache + row_of(s, table, first, u.h0), run_of(s, first, len), s->n_head_kv * d, u.nh * d);
}

/* out[g][j0 .. j0 + 8 * COLS) += sum over the n positions t of the run from `v` (step elements
 * apart; p's index of the first: i0) of p[g][t] * V[t] there, in order, for the NG queries g of
 * p (rows stride apart): each V load serves the NG queries. out holds the sums of the earlier
 * runs, so each column is summed over t in order, run after run. */
static inline __attribute__((always_inline)) void weighted_run(const float *p, int64_t stride, int64_t i0,
                                                               const KV_T *v, int64_t n, int64_t step,
                                                               int64_t d, int64_t j0, const int NG, const int COLS,
                                                               float *out) {
    v8f acc[4][2];
    for (int g = 0; g < NG; g++)
        for (int c = 0; c < COLS; c++)
            acc[g][c] = load8(out + g * d + j0 + 8 * c);
    v += j0;
    for (int64_t i = 0; i < n; i++, v += step) {
        v8f x[2];
        for (int c = 0; c < COLS; c++)
            x[c] = load_kv8(v + 8 * c);
        for (int g = 0; g < NG; g++) {
            float pt = p[g * stride + i0 + i];
            v8f pv = {pt, pt, pt, pt, pt, pt, pt, pt};
            for (int c = 0; c < COLS; c++)
                acc[g][c] += pv * x[c];
        }
    }
    for (int g = 0; g < NG; g++)
        for (int c = 0; c < COLS; c++)
            store8(out + g * d + j0 + 8 * c, acc[g][c]);
}

/* weighted_run over every column of the NG queries: 16 columns a pass (one 64-byte line of each
 * row), then 8, then the scalar rest. */
static inline __attribute__((always_inline)) void weighted_run_all(const float *p, int64_t stride, int64_t i0,
                                                                   const KV_T *v, int64_t n, int64_t step,
                                                                   int64_t d, const int NG, float *out) {
    int64_t j = 0;
    for (; j + 16 <= d; j += 16)
        weighted_run(p, stride, i0, v, n, step, d, j, NG, 2, out);
    for (; j + 8 <= d; j += 8)
        weighted_run(p, stride, i0, v, n, step, d, j, NG, 1, out);
    for (; j < d; j++)
        for (int g = 0; g < NG; g++) {
            float sum = out[g * d + j];
            for (int64_t i = 0; i < n; i++)
                sum += p[g * stride + i0 + i] * v[i * step + j];
            out[g * d + j] = sum;
        }
}

/* The weighted V of one KV head's group over one run: 4 queries a pass, then the 3, 2 or 1 left. */
static inline __attribute__((always_inline)) void group_run(const shape_t *s, const float *p, int64_t stride,
                                                            int64_t i0, const KV_T *v, int64_t n, float *out) {
    int64_t d = s->head_dim, step = s->n_head_kv * d, g = 0;
    for (; g + 4 <= s->group; g += 4)
        weighted_run_all(p + g * stride, stride, i0, v, n, step, d, 4, out + g * d);
    switch (s->group - g) {
    case 3: weighted_run_all(p + g * stride, stride, i0, v, n, step, d, 3, out + g * d); break;
    case 2: weighted_run_all(p + g * stride, stride, i0, v, n, step, d, 2, out + g * d); break;
    case 1: weighted_run_all(p + g * stride, stride, i0, v, n, step, d, 1, out + g * d); break;
    }
}

/* out (the unit's query heads, head_dim) = sum over positions [first, len), in order, of p *
 * V, times inv: run by run (at most VRUN slots of one block), every head of the unit over a run
 * before the next (the next run prefetched whole first). */
static inline __attribute__((always_inline)) void unit_weighted_v(const shape_t *s, const float *p, int64_t stride,
                                                                  const KV_T *v_cache, const int64_t *table,
                                                                  int64_t first, int64_t len, heads_t u,
                                                                  const float *inv, float *out) {
    int64_t d = s->head_dim, step = s->n_head_kv * d, nq = u.nh * s->group;
    memset(out, 0, (size_t)(nq * d) * sizeof(float));
    for (int64_t t0 = first, t1; t0 < len; t0 = t1) {
        const KV_T *v = v_cache + row_of(s, table, t0, u.h0);
        int64_t n = run_of(s, t0, len);
        t1 = t0 + n;
        if (t1 < len)
            prefetch_run(v_cache + row_of(s, table, t1, u.h0), run_of(s, t1, len), step, u.nh * d);
        for (int64_t h = 0; h < u.nh; h++)
            group_run(s, p + h * s->group * stride, stride, t0 - first, v + h * d, n, out + h * s->group * d);
    }
    for (int64_t g = 0; g < nq; g++) {
        v8f scale = {inv[g], inv[g], inv[g], inv[g], inv[g], inv[g], inv[g], inv[g]};
        int64_t j = 0;
        for (; j + 8 <= d; j += 8)
            store8(out + g * d + j, load8(out + g * d + j) * scale);
        for (; j < d; j++)
            out[g * d + j] *= inv[g];
    }
}

/* One sequence's query heads of KV heads u (q (nh * group, head_dim)) over its positions
 * [first, len) (pages from `table`); scores (nh * group, stride) scratch, out (nh * group,
 * head_dim). */
VL_CLONES
static void attend(const shape_t *s, const float *q, const KV_T *k_cache, const KV_T *v_cache,
                   const int64_t *table, int64_t first, int64_t len, heads_t u, float *scores,
                   int64_t stride, float *out) {
    if (s->softcap > 0.0f)
        unit_scores(s, q, k_cache, v_cache, table, first, len, u, scores, stride, 1);
    else
        unit_scores(s, q, k_cache, v_cache, table, first, len, u, scores, stride, 0);
    int64_t nq = u.nh * s->group;
    float inv[nq];                                     /* 1 / each query's sum of exponentials */
    for (int64_t g = 0; g < nq; g++)
        inv[g] = softmax_unnormalised(scores + g * stride, len - first);
    unit_weighted_v(s, scores, stride, v_cache, table, first, len, u, inv, out);
}

/* Every KV head in one unit (each slot read once) when there are at least as many sequences as
 * threads; fewer sequences: their heads split into as many units as fill the threads (a thread
 * with no unit would idle; measured at B = 1 on 2 threads, context 2,000: 0.80 ms one unit, 0.50
 * two, 0.46 four). The results do not depend on it. */
static int64_t default_heads_per_unit(int64_t B, int64_t n_head_kv, int num_threads) {
    if (B >= num_threads)
        return n_head_kv;
    int64_t splits = (num_threads + B - 1) / B;       /* units per sequence wanted */
    splits = splits < n_head_kv ? splits : n_head_kv;
    return (n_head_kv + splits - 1) / splits;
}

void KV_NAME(vl_decode_attention_split)(const float *q, const KV_T *k_cache, const KV_T *v_cache,
                               const int64_t *block_tables, const int64_t *context_lens, const int64_t *starts,
                               float *scores, float *out, int64_t B, int64_t n_head, int64_t n_head_kv,
                               int64_t head_dim, int64_t block_size, int64_t max_blocks, float scale,
                               float softcap, int num_threads, int64_t heads_per_unit) {
    shape_t s = {n_head / n_head_kv, n_head_kv, head_dim, block_size, scale, softcap,
                 softcap > 0.0f ? (float)(1.0 / (double)softcap) : 0.0f};
    if (num_threads < 1)
        num_threads = 1;
    if (heads_per_unit < 1 || heads_per_unit > n_head_kv)
        heads_per_unit = default_heads_per_unit(B, n_head_kv, num_threads);
    int64_t stride = max_blocks * block_size, per_seq = (n_head_kv + heads_per_unit - 1) / heads_per_unit;
    int64_t units = B * per_seq;
#pragma omp parallel for schedule(static) num_threads(num_threads) if (num_threads > 1 && units > 1)
    for (int64_t unit = 0; unit < units; unit++) {
        int64_t b = unit / per_seq, h0 = unit % per_seq * heads_per_unit;
        heads_t u = {h0, n_head_kv - h0 < heads_per_unit ? n_head_kv - h0 : heads_per_unit};
        int64_t first = b * n_head + h0 * s.group;       /* this unit's first query head */
        attend(&s, q + first * head_dim, k_cache, v_cache, block_tables + b * max_blocks,
               starts ? starts[b] : 0, context_lens[b], u, scores + first * stride, stride, out + first * head_dim);
    }
}

void KV_NAME(vl_decode_attention)(const float *q, const KV_T *k_cache, const KV_T *v_cache,
                         const int64_t *block_tables, const int64_t *context_lens, const int64_t *starts,
                         float *scores, float *out, int64_t B, int64_t n_head, int64_t n_head_kv,
                         int64_t head_dim, int64_t block_size, int64_t max_blocks, float scale, float softcap,
                         int num_threads) {
    KV_NAME(vl_decode_attention_split)(q, k_cache, v_cache, block_tables, context_lens, starts, scores, out, B, n_head,
                              n_head_kv, head_dim, block_size, max_blocks, scale, softcap, num_threads, 0);
}
