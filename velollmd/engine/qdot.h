/* Internal to the quantised kernels (matmul_q8.c, matmul_q4k.c, matmul_q6k.c): ggml's lane sums and
 * its final float reduction, shared so that every kernel adds the same way. */
#ifndef VL_QDOT_H
#define VL_QDOT_H

#include <stdint.h>

#include "matmul_q8.h"
#include "vecf.h"

typedef int32_t v8i __attribute__((vector_size(32)));

/* ggml's hsum_float_8: (lanes 0-3 + lanes 4-7), then (0 + 2) + (1 + 3). */
static inline __attribute__((always_inline)) float hsum_ggml(v8f v) {
    float a0 = v[0] + v[4], a1 = v[1] + v[5], a2 = v[2] + v[6], a3 = v[3] + v[7];
    return (a0 + a2) + (a1 + a3);
}

/* The 8 lane sums of 32 byte pairs: lane l = sum of w[4l + i] * x[4l + i], i < 4 (exact). The
 * lanes ggml's AVX2 maddubs + madd (or vpdpbusd) leave in a 256-bit register. */
static inline __attribute__((always_inline)) v8i lanes_portable(const int8_t *w, const int8_t *x) {
    v8i s = {0};
    for (int l = 0; l < 8; l++) {
        int32_t t = 0;
        for (int i = 0; i < 4; i++)
            t += (int32_t)w[4 * l + i] * (int32_t)x[4 * l + i];
        s[l] = t;
    }
    return s;
}

/* The K-quant kernels' path (matmul_q4k.c, matmul_q6k.c: portable or AVX2, as ggml has no VNNI
 * path for them): VL_Q8_BEST resolved to the fastest here; -1 when not available here. */
static inline int k_quant_path(int path) {
    int paths = vl_q8_0_paths() & ((1 << VL_Q8_PORTABLE) | (1 << VL_Q8_AVX2));
    if (path == VL_Q8_BEST)
        path = paths & (1 << VL_Q8_AVX2) ? VL_Q8_AVX2 : VL_Q8_PORTABLE;
    return path >= VL_Q8_PORTABLE && path <= VL_Q8_AVX2 && (paths & (1 << path)) ? path : -1;
}

#endif
