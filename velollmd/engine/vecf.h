/* Internal to the engine's kernels (matmul.c, attention.c, activations.c): 8-float vectors with
 * GCC's vector extensions, a few lane-wise helpers (max, exp), and the clone attribute that adds
 * an AVX2+FMA build picked at load time. */
#ifndef VL_VECF_H
#define VL_VECF_H

#include <string.h>

typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));

#ifndef VL_CLONES      /* attention_f16c.c builds for x86-64-v3 alone: no clones */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VL_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define VL_CLONES
#endif
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

/* Lane-wise a > b ? a : b (GCC's C has no vector ?:; this compiles to vmaxps; matmul_q8.c has its own max8). */
static inline __attribute__((always_inline)) v8f vmax8(v8f a, v8f b) {
    v8i take = a > b;
    return (v8f)(((v8i)a & take) | ((v8i)b & ~take));
}

/* e^x lane-wise for x <= 0 (e.g. a score minus its row's max): Cephes' expf, a degree-6 polynomial
 * on x - n ln 2 scaled by 2^n, within 2 ulp of expf; x below -87 gives e^-87 (~1.6e-38, where
 * a softmax row's largest term is 1). */
static inline __attribute__((always_inline)) v8f exp8(v8f x) {
    const v8f lo = {-87.0f, -87.0f, -87.0f, -87.0f, -87.0f, -87.0f, -87.0f, -87.0f};
    x = vmax8(x, lo);
    v8f n = x * 1.44269504088896341f + 12582912.0f - 12582912.0f;  /* round(x / ln 2), |.| < 2^22 */
    v8f r = x - n * 0.693359375f - n * -2.12194440e-4f;             /* ln 2 in two parts */
    v8f y = 1.9875691500e-4f * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * (r * r) + r + 1.0f;
    v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;       /* 2^n, n >= -126 */
    v8f scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

#endif
