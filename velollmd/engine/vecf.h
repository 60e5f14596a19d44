/* Internal to the engine's kernels (matmul.c, attention.c): 8-float vectors with GCC's vector
 * extensions, and the clone attribute that adds an AVX2+FMA build picked at load time. */
#ifndef VL_VECF_H
#define VL_VECF_H

#include <string.h>

typedef float v8f __attribute__((vector_size(32)));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VL_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define VL_CLONES
#endif

static inline __attribute__((always_inline)) v8f load8(const float *p) {
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline __attribute__((always_inline)) void store8(float *p, v8f v) {
    memcpy(p, &v, sizeof v);
}

/* Lanes 0..7 added pairwise in a fixed order. */
static inline __attribute__((always_inline)) float hsum(v8f v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

#endif
