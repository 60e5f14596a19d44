/* See matmul_q5k.h: Q4_K's tiles (scale_min_tiles.h) with the 5th bit and ggml's Q5_K mins sum. */
#include "matmul_q5k.h"

#include "tasks.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define SM_HIGH_BITS 1
#include "scale_min_tiles.h"

#define ROWS_PER_TASK 64

int vl_matmul_q5_k(const int8_t *xq, const float *xd, const int16_t *xbsums, const uint8_t *qs,
                   const uint8_t *qh, const uint8_t *sc, const uint8_t *mn, const float *wd,
                   const float *wdmin, float *y, int64_t B, int64_t K, int64_t N, int num_threads, int path) {
    path = k_quant_path(path);
    if (path < 0)
        return -1;
    int64_t num_tasks = row_tasks(N, ROWS_PER_TASK, &num_threads);
#pragma omp parallel for schedule(static) num_threads(num_threads) if (num_threads > 1)
    for (int64_t task = 0; task < num_tasks; task++) {
        int64_t n0 = task * ROWS_PER_TASK, n1 = task_end(n0, ROWS_PER_TASK, N);
        sm_rows(xq, xd, xbsums, qs, qh, sc, mn, wd, wdmin, y, B, K, N, n0, n1, path);
    }
    return path;
}
