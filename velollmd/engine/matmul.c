/* See matmul.h. Portable C with GCC vector extensions (8 float lanes); on x86-64 GCC also
 * builds an AVX2+FMA clone of the kernel and picks it at load time (target_clones), so the
 * extension runs on any x86-64 and is fast on the common one; on a CPU with AVX-512, groups of
 * 8 inputs take a wide tile (tile_x8) that does the same 8-lane sums two pairs at a time. */
#include "matmul.h"

#include <stdlib.h>

#include "tasks.h"
#include "vecf.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define ROWS 3          /* weight rows per tile for each 4 inputs: 12 accumulators */
#define COLS 4
#define ROWS_ONE 6      /* weight rows per tile for an input left over (B % 4): 6 streams */
#define MAX_ROWS 6
#define PF_AHEAD 6      /* the weight rows a block prefetches: the next block's */

/* hsum of one (row, input) pair's 8 lane sums, then the scalar tail of K from k: the same
 * arithmetic in tile() and tile_x8(), so a result does not depend on which tile ran it. */
static inline __attribute__((always_inline)) float finish(v8f lanes, const float *w_row, const float *x_row,
                                                         int64_t k, int64_t K) {
    float sum = hsum(lanes);
    for (int64_t t = k; t < K; t++)
        sum = __builtin_fmaf(w_row[t], x_row[t], sum);   /* one FMA in every build */
    return sum;
}

/* `rows` weight rows x `cols` inputs (compile-time constants at each call site). Every
 * (row, input) pair gets the same arithmetic whatever the tile: 8 lane sums over k, hsum, then
 * the scalar tail, so a result does not depend on B. With `pf`, the tile also prefetches K / spread
 * floats of each of its rows' successors (pf: `rows` rows K apart), one line every 2 * spread steps. */
static inline __attribute__((always_inline)) void tile(const float *w, const float *x, float *y,
                                                      int64_t K, int64_t N, int rows, int cols,
                                                      const float *pf, int64_t spread) {
    v8f acc[MAX_ROWS][COLS] = {{{0}}};
    int64_t k = 0, countdown = 1;
    for (; k + 8 <= K; k += 8) {
        v8f xv[COLS];
        for (int c = 0; c < cols; c++)
            xv[c] = load8(x + c * K + k);
        for (int r = 0; r < rows; r++) {
            v8f wv = load8(w + r * K + k);
            for (int c = 0; c < cols; c++)
                acc[r][c] += wv * xv[c];
        }
        if (pf && --countdown == 0) {
            for (int r = 0; r < rows; r++)
                __builtin_prefetch(pf + r * K, 0, 2);     /* read, into L2 */
            pf += 16;
            countdown = 2 * spread;
        }
    }
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            y[c * N + r] = finish(acc[r][c], w + r * K, x + c * K, k, K);
}

typedef float v16f __attribute__((vector_size(64)));

static inline __attribute__((always_inline)) v16f load16(const float *p) {
    v16f v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* [p[0..7], p[0..7]]: one weight row's 8 floats for both inputs of a pair. */
static inline __attribute__((always_inline)) v16f dup8(const float *p) {
    v8f h = load8(p);
    return __builtin_shufflevector(h, h, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7);
}

#define X8 8            /* inputs per wide tile, in 4 pairs */

/* ROWS_ONE weight rows x 8 inputs, the 16 lanes of acc[r][p] holding inputs 2p (lanes 0-7) and
 * 2p + 1 (lanes 8-15): lane for lane the arithmetic of tile() (each lane an FMA chain over its
 * k's, then hsum and the scalar tail), so the results are tile()'s bit for bit, with 24 of the
 * 32 registers of AVX-512 as accumulators. xp: the 8 inputs packed (K / 8, 8 inputs, 8 floats)
 * (pack_x8); x: the same inputs unpacked, for the tail of K. Prefetch as in tile(). */
static inline __attribute__((always_inline)) void tile_x8(const float *w, const float *xp, const float *x,
                                                         float *y, int64_t K, int64_t N, const float *pf,
                                                         int64_t spread) {
    v16f acc[ROWS_ONE][X8 / 2] = {{{0}}};
    int64_t k = 0, countdown = 1;
    for (; k + 8 <= K; k += 8, xp += 8 * X8) {
        v16f xv[X8 / 2];
        for (int p = 0; p < X8 / 2; p++)
            xv[p] = load16(xp + 16 * p);
        for (int r = 0; r < ROWS_ONE; r++) {
            v16f wv = dup8(w + r * K + k);
            for (int p = 0; p < X8 / 2; p++)
                acc[r][p] += wv * xv[p];
        }
        if (pf && --countdown == 0) {
            for (int r = 0; r < ROWS_ONE; r++)
                __builtin_prefetch(pf + r * K, 0, 2);
            pf += 16;
            countdown = 2 * spread;
        }
    }
    for (int r = 0; r < ROWS_ONE; r++)
        for (int c = 0; c < X8; c++) {
            v16f pair = acc[r][c / 2];
            v8f lanes = c % 2 ? __builtin_shufflevector(pair, pair, 8, 9, 10, 11, 12, 13, 14, 15)
                              : __builtin_shufflevector(pair, pair, 0, 1, 2, 3, 4, 5, 6, 7);
            y[c * N + r] = finish(lanes, w + r * K, x + c * K, k, K);
        }
}

/* Rows [n0, n1) of w against all B inputs; each block of ROWS_ONE rows is read from memory once
 * and from L1 for the other inputs. From 4 inputs on, the block's tiles also prefetch the next
 * block, each pass over the block (a group of 8 or 4 inputs) its 1 / passes share of K, so that
 * memory streams the next weights while the core computes on these (without it a step's time was
 * memory's plus the FMAs', not the larger of the two: benchmarks/RESULTS.md, Engine). With xp
 * (the wide build only), groups of 8 inputs go through tile_x8. */
static inline __attribute__((always_inline)) void rows_body(const float *x, const float *xp, const float *w,
                                                           float *y, int64_t B, int64_t K, int64_t N,
                                                           int64_t n0, int64_t n1) {
    int64_t n = n0, wide = xp ? B / X8 : 0, passes = wide + (B - wide * X8) / COLS;
    for (; n + ROWS_ONE <= n1; n += ROWS_ONE) {
        int64_t b = 0, pass = 0;
        const float *ahead = n + PF_AHEAD + ROWS_ONE <= N ? w + (n + PF_AHEAD) * K : NULL;
        for (; b < wide * X8; b += X8, pass++)
            tile_x8(w + n * K, xp + b * (K / 8 * 8), x + b * K, y + b * N + n, K, N,
                    ahead ? ahead + pass * K / passes : NULL, passes);
        for (; b + COLS <= B; b += COLS, pass++)
            for (int r = 0; r < ROWS_ONE; r += ROWS)
                tile(w + (n + r) * K, x + b * K, y + b * N + n + r, K, N, ROWS, COLS,
                     ahead ? ahead + r * K + pass * K / passes : NULL, passes);
        for (; b < B; b++)
            tile(w + n * K, x + b * K, y + b * N + n, K, N, ROWS_ONE, 1, NULL, 1);
    }
    for (; n < n1; n++)
        for (int64_t b = 0; b < B; b++)
            tile(w + n * K, x + b * K, y + b * N + n, K, N, 1, 1, NULL, 1);
}

VL_CLONES
static void rows_kernel(const float *x, const float *w, float *y, int64_t B, int64_t K, int64_t N,
                        int64_t n0, int64_t n1) {
    rows_body(x, NULL, w, y, B, K, N, n0, n1);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VL_WIDE 1
__attribute__((target("arch=x86-64-v4")))
static void rows_kernel_wide(const float *x, const float *xp, const float *w, float *y, int64_t B, int64_t K,
                             int64_t N, int64_t n0, int64_t n1) {
    rows_body(x, xp, w, y, B, K, N, n0, n1);
}

static int has_avx512(void) {
    static int known = -1;
    if (known < 0)
        known = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
                && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
    return known;
}
#endif

/* The first B / 8 * 8 inputs as tile_x8 reads them: per group of 8, (K / 8, 8 inputs, 8 floats). */
static float *pack_x8(const float *x, int64_t B, int64_t K) {
    int64_t groups = B / X8, blocks = K / 8;
    float *xp = malloc(sizeof(float) * (size_t)(groups * X8 * blocks * 8 + 1));
    if (!xp)
        return NULL;
    for (int64_t g = 0; g < groups; g++)
        for (int64_t kb = 0; kb < blocks; kb++)
            for (int c = 0; c < X8; c++)
                memcpy(xp + ((g * blocks + kb) * X8 + c) * 8, x + (g * X8 + c) * K + kb * 8, 8 * sizeof(float));
    return xp;
}

#define ROWS_PER_TASK 48    /* a task's weights: 48 rows (192 KiB at K = 1024) */

/* One product's arguments, for run_row_tasks (xp: pack_x8's inputs, NULL: the 8-lane tiles). */
struct nt_args {
    const float *x, *xp, *w;
    float *y;
    int64_t B, K, N;
};

static void nt_rows(const void *args, int64_t n0, int64_t n1) {
    const struct nt_args *a = args;
#ifdef VL_WIDE
    if (a->xp) {
        rows_kernel_wide(a->x, a->xp, a->w, a->y, a->B, a->K, a->N, n0, n1);
        return;
    }
#endif
    rows_kernel(a->x, a->w, a->y, a->B, a->K, a->N, n0, n1);
}

void vl_matmul_nt(const float *x, const float *w, float *y, int64_t B, int64_t K, int64_t N,
                  int num_threads) {
    struct nt_args args = {x, NULL, w, y, B, K, N};
#ifdef VL_WIDE
    if (B >= X8 && has_avx512())
        args.xp = pack_x8(x, B, K);    /* NULL (out of memory): the 8-lane tiles do it all */
#endif
    run_row_tasks(nt_rows, &args, N, ROWS_PER_TASK, num_threads);
    free((void *)args.xp);
}

int vl_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
