/* See attention.h. The reference is ops.decode_attention over kvcache.gather_padded (numpy);
 * tests/engine/test_attention_kernel.py checks one against the other. */
#include "attention.h"

#include <math.h>

#include "vecf.h"

/* [x0 + x1, x2 + x3, y0 + y1, y2 + y3, x4 + x5, x6 + x7, y4 + y5, y6 + y7] (AVX's vhaddps). */
static inline __attribute__((always_inline)) v8f hadd(v8f x, v8f y) {
    typedef int v8i __attribute__((vector_size(32)));
    return __builtin_shuffle(x, y, (v8i){0, 2, 8, 10, 4, 6, 12, 14})
         + __builtin_shuffle(x, y, (v8i){1, 3, 9, 11, 5, 7, 13, 15});
}

/* [hsum(a[0]), ..., hsum(a[7])], each lane summed in exactly hsum's order. */
static inline __attribute__((always_inline)) v8f hsum8(const v8f a[8]) {
    typedef int v8i __attribute__((vector_size(32)));
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

/* softmax of s[0..n) in place: exp(s - max) / sum, summed in order. */
static void softmax(float *s, int64_t n) {
    float max = s[0], sum = 0.0f;
    for (int64_t t = 1; t < n; t++)
        max = s[t] > max ? s[t] : max;
    for (int64_t t = 0; t < n; t++) {
        s[t] = expf(s[t] - max);
        sum += s[t];
    }
    float inv = 1.0f / sum;
    for (int64_t t = 0; t < n; t++)
        s[t] *= inv;
}

/* Geometry of one call: what every (sequence, KV head) unit needs besides its own pointers. */
typedef struct {
    int64_t group, n_head_kv, head_dim, block_size;
    float scale;
} shape_t;

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
 * hardware prefetcher sees a stride for a block's few rows only); how many of the 8 are valid. */
static inline __attribute__((always_inline)) int64_t rows8_ahead(const shape_t *s, const float *cache,
                                                                 const int64_t *table, int64_t t0, int64_t len,
                                                                 int64_t h, const float *rows[8]) {
    if (t0 + AHEAD < len) {
        rows8(s, cache, table, t0 + AHEAD, len, h, rows);
        prefetch8(rows, s->head_dim);
    }
    rows8(s, cache, table, t0, len, h, rows);
    return len - t0 < 8 ? len - t0 : 8;
}

/* scores[g][t] for the group's queries over positions [0, len), 8 positions at a time (a last
 * partial 8 repeats its last row and keeps the valid lanes only: one code path for every score);
 * then a prefetch of the V rows of the first positions. */
static inline __attribute__((always_inline)) void unit_scores(const shape_t *s, const float *q,
                                                              const float *k_cache, const float *v_cache,
                                                              const int64_t *table, int64_t len, int64_t h,
                                                              float *scores, int64_t stride) {
    const float *k[8];
    for (int64_t t0 = 0; t0 < len; t0 += 8) {
        int64_t valid = rows8_ahead(s, k_cache, table, t0, len, h, k);
        for (int64_t g = 0; g < s->group; g++) {
            v8f sums = dot8(q + g * s->head_dim, k, s->head_dim, s->scale);
            if (valid == 8)
                store8(scores + g * stride + t0, sums);
            else
                for (int64_t i = 0; i < valid; i++)
                    scores[g * stride + t0 + i] = sums[i];
        }
    }
    for (int64_t t0 = 0; t0 < len && t0 < AHEAD; t0 += 8) {
        rows8(s, v_cache, table, t0, len, h, k);
        prefetch8(k, s->head_dim);
    }
}

/* out[j0 .. j0 + 8 * cols) of one query = sum over t (in order, from 0) of p[t] * V[t] there;
 * the rows AHEAD positions on are prefetched meanwhile. */
static inline __attribute__((always_inline)) void weighted_v(const shape_t *s, const float *p,
                                                             const float *v_cache, const int64_t *table,
                                                             int64_t len, int64_t h, int64_t j0, int cols,
                                                             float *out) {
    v8f acc[8] = {{0}};
    const float *v[8];
    for (int64_t t0 = 0; t0 < len; t0 += 8) {
        int64_t valid = rows8_ahead(s, v_cache, table, t0, len, h, v);
        for (int64_t i = 0; i < valid; i++) {
            float pt = p[t0 + i];
            v8f pv = {pt, pt, pt, pt, pt, pt, pt, pt};
            for (int c = 0; c < cols; c++)
                acc[c] += pv * load8(v[i] + j0 + 8 * c);
        }
    }
    for (int c = 0; c < cols; c++)
        store8(out + j0 + 8 * c, acc[c]);
}

/* One sequence's `group` query heads q (group, head_dim) over KV head `h` of its first `len`
 * positions (pages from `table`); scores (group, stride) scratch, out (group, head_dim). */
VL_CLONES
static void attend(const shape_t *s, const float *q, const float *k_cache, const float *v_cache,
                   const int64_t *table, int64_t len, int64_t h, float *scores, int64_t stride,
                   float *out) {
    int64_t d = s->head_dim;
    unit_scores(s, q, k_cache, v_cache, table, len, h, scores, stride);
    for (int64_t g = 0; g < s->group; g++) {
        float *p = scores + g * stride, *o = out + g * d;
        softmax(p, len);
        int64_t j = 0;
        for (; j + 64 <= d; j += 64)
            weighted_v(s, p, v_cache, table, len, h, j, 8, o);
        for (; j + 8 <= d; j += 8)
            weighted_v(s, p, v_cache, table, len, h, j, 1, o);
        for (; j < d; j++) {
            float sum = 0.0f;
            for (int64_t t = 0; t < len; t++)
                sum += p[t] * v_cache[row_of(s, table, t, h) + j];
            o[j] = sum;
        }
    }
}

void vl_decode_attention(const float *q, const float *k_cache, const float *v_cache,
                         const int64_t *block_tables, const int64_t *context_lens, float *scores,
                         float *out, int64_t B, int64_t n_head, int64_t n_head_kv, int64_t head_dim,
                         int64_t block_size, int64_t max_blocks, float scale, int num_threads) {
    shape_t s = {n_head / n_head_kv, n_head_kv, head_dim, block_size, scale};
    int64_t stride = max_blocks * block_size, units = B * n_head_kv;
    if (num_threads < 1)
        num_threads = 1;
#pragma omp parallel for schedule(static) num_threads(num_threads) if (num_threads > 1 && units > 1)
    for (int64_t unit = 0; unit < units; unit++) {
        int64_t b = unit / n_head_kv, h = unit % n_head_kv;
        int64_t first = b * n_head + h * s.group;        /* this unit's first query head */
        attend(&s, q + first * head_dim, k_cache, v_cache, block_tables + b * max_blocks,
               context_lens[b], h, scores + first * stride, stride, out + first * head_dim);
    }
}
