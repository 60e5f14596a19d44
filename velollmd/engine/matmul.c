/* See matmul.h. Portable C with GCC vector extensions (8 float lanes); on x86-64 GCC also
 * builds an AVX2+FMA clone of the kernel and picks it at load time (target_clones), so the
 * extension runs on any x86-64 and is fast on the common one. */
#include "matmul.h"

#include "vecf.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define ROWS 3          /* weight rows per tile for each 4 inputs: 12 accumulators */
#define COLS 4
#define ROWS_ONE 6      /* weight rows per tile for an input left over (B % 4): 6 streams */
#define MAX_ROWS 6
#define PF_AHEAD 6      /* the weight rows a block prefetches: the next block's */

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
        for (int c = 0; c < cols; c++) {
            float sum = hsum(acc[r][c]);
            for (int64_t t = k; t < K; t++)
                sum += w[r * K + t] * x[c * K + t];
            y[c * N + r] = sum;
        }
}

/* Rows [n0, n1) of w against all B inputs; each block of ROWS_ONE rows is read from memory once
 * and from L1 for the other inputs. From 4 inputs on, the block's tiles also prefetch the next
 * block, each group of 4 inputs its 1 / groups share of K, so that memory streams the next
 * weights while the core computes on these (without it a step's time was memory's plus the
 * FMAs', not the larger of the two: benchmarks/RESULTS.md, Engine). */
VL_CLONES
static void rows_kernel(const float *x, const float *w, float *y, int64_t B, int64_t K, int64_t N,
                        int64_t n0, int64_t n1) {
    int64_t n = n0, groups = B / COLS;
    for (; n + ROWS_ONE <= n1; n += ROWS_ONE) {
        int64_t b = 0;
        const float *ahead = n + PF_AHEAD + ROWS_ONE <= N ? w + (n + PF_AHEAD) * K : NULL;
        for (; b + COLS <= B; b += COLS)
            for (int r = 0; r < ROWS_ONE; r += ROWS)
                tile(w + (n + r) * K, x + b * K, y + b * N + n + r, K, N, ROWS, COLS,
                     ahead ? ahead + r * K + (b / COLS) * K / groups : NULL, groups);
        for (; b < B; b++)
            tile(w + n * K, x + b * K, y + b * N + n, K, N, ROWS_ONE, 1, NULL, 1);
    }
    for (; n < n1; n++)
        for (int64_t b = 0; b < B; b++)
            tile(w + n * K, x + b * K, y + b * N + n, K, N, 1, 1, NULL, 1);
}

#define ROWS_PER_TASK 48    /* a task's weights: 48 rows (192 KiB at K = 1024) */

void vl_matmul_nt(const float *x, const float *w, float *y, int64_t B, int64_t K, int64_t N,
                  int num_threads) {
    int64_t num_tasks = (N + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
    if (num_threads < 1)
        num_threads = 1;
    if (num_threads > num_tasks)
        num_threads = (int)num_tasks;
#pragma omp parallel for schedule(static) num_threads(num_threads) if (num_threads > 1)
    for (int64_t task = 0; task < num_tasks; task++) {
        int64_t n0 = task * ROWS_PER_TASK;
        int64_t n1 = n0 + ROWS_PER_TASK < N ? n0 + ROWS_PER_TASK : N;
        rows_kernel(x, w, y, B, K, N, n0, n1);
    }
}

int vl_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
