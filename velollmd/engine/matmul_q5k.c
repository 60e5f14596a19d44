/* See matmul_q5k.h: Q4_K's tiles (scale_min_tiles.h) with the 5th bit and ggml's Q5_K mins sum. */
#include "matmul_q5k.h"

#define SM_HIGH_BITS 1
#include "scale_min_tiles.h"

int vl_matmul_q5_k(const int8_t *xq, const float *xd, const int16_t *xbsums, const uint8_t *qs,
                   const uint8_t *qh, const uint8_t *sc, const uint8_t *mn, const float *wd,
                   const float *wdmin, float *y, int64_t B, int64_t K, int64_t N, int num_threads, int path) {
    return sm_matmul((sm_call){xq, xd, xbsums, qs, qh, sc, mn, wd, wdmin, y, B, K, N, path}, num_threads);
}
