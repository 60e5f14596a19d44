/* See matmul_q4k.h. The tiles (scale_min_tiles.h, shared with Q5_K) have two paths with one
 * arithmetic: portable C (GCC vector extensions, built twice by target_clones like matmul.c; each
 * tile unpacks a super-block's nibbles once for all its inputs) and AVX2 (ggml's maddubs on the
 * nibbles, madd with the scales). */
#include "matmul_q4k.h"

#define SM_HIGH_BITS 0
#include "scale_min_tiles.h"

int vl_matmul_q4_k(const int8_t *xq, const float *xd, const int16_t *xbsums, const uint8_t *qs,
                   const uint8_t *sc, const uint8_t *mn, const float *wd, const float *wdmin, float *y,
                   int64_t B, int64_t K, int64_t N, int num_threads, int path) {
    return sm_matmul((sm_call){xq, xd, xbsums, qs, NULL, sc, mn, wd, wdmin, y, B, K, N, path}, num_threads);
}

/* ggml's nearest_int: round half to even through the float's mantissa (|v| < 2^22). */
static inline __attribute__((always_inline)) int32_t nearest_int(float v) {
    float shifted = v + 12582912.0f;
    int32_t bits;
    memcpy(&bits, &shifted, sizeof bits);
    return (bits & 0x007fffff) - 0x00400000;
}

/* One block: the signed value of largest magnitude (the first), iscale = -127 / it, q =
 * min(127, nearest_int(iscale * x)), d = 1 / iscale; all-zero: d = 0, q = 0. The product is
 * rounded before the addition in nearest_int: fp-contract=off on the caller, which inlines this. */
static inline __attribute__((always_inline)) void quantize_block_k(const float *x, int8_t *q, float *d,
                                                                  int16_t *bsums) {
    float amax = 0.0f, peak = 0.0f;
    for (int j = 0; j < QK_K; j++) {
        float magnitude = __builtin_fabsf(x[j]);
        if (magnitude > amax) {
            amax = magnitude;
            peak = x[j];
        }
    }
    if (amax == 0.0f) {
        memset(q, 0, QK_K);
        memset(bsums, 0, QK_K / 16 * sizeof *bsums);
        *d = 0.0f;
        return;
    }
    float iscale = -127.0f / peak;
    for (int j = 0; j < QK_K; j++) {
        int32_t v = nearest_int(iscale * x[j]);
        q[j] = (int8_t)(v < 127 ? v : 127);
    }
    for (int j = 0; j < QK_K / 16; j++) {
        int32_t sum = 0;
        for (int i = 0; i < 16; i++)
            sum += q[16 * j + i];
        bsums[j] = (int16_t)sum;
    }
    *d = 1.0f / iscale;
}

VL_CLONES __attribute__((optimize("fp-contract=off")))
void vl_quantize_q8_k(const float *x, int8_t *q, float *d, int16_t *bsums, int64_t num_blocks) {
    for (int64_t j = 0; j < num_blocks; j++)
        quantize_block_k(x + j * QK_K, q + j * QK_K, d + j, bsums + j * (QK_K / 16));
}
