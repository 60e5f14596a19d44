/* See activations.h; tests/engine/test_activations.py checks it against ops.silu. */
#include "activations.h"

#include "vecf.h"

/* silu(g) * u lane-wise: with e = e^-|g| (<= 1, never overflows), sigmoid(g) is 1 / (1 + e)
 * for g >= 0 and e / (1 + e) below. */
static inline __attribute__((always_inline)) v8f silu_mul8(v8f g, v8f u) {
    v8f zero = {0}, one = zero + 1.0f;
    v8i negative = g < zero;
    v8f e = exp8((v8f)((v8i)g | (~negative & (int32_t)0x80000000)));   /* e^-|g| */
    v8f top = (v8f)(((v8i)e & negative) | ((v8i)one & ~negative));
    return g * (top / (one + e)) * u;
}

VL_CLONES
static void silu_mul_row(const float *gate, const float *up, float *out, int64_t n) {
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        store8(out + j, silu_mul8(load8(gate + j), load8(up + j)));
    if (j < n) {                                      /* the last partial 8, on padded copies */
        v8f g = {0}, u = {0}, y;
        memcpy(&g, gate + j, (size_t)(n - j) * sizeof(float));
        memcpy(&u, up + j, (size_t)(n - j) * sizeof(float));
        y = silu_mul8(g, u);
        memcpy(out + j, &y, (size_t)(n - j) * sizeof(float));
    }
}

void vl_silu_mul(const float *gate, const float *up, float *out, int64_t rows, int64_t n,
                 int64_t gate_stride, int64_t up_stride, int num_threads) {
    if (num_threads < 1)
        num_threads = 1;
#pragma omp parallel for schedule(static) num_threads(num_threads) if (num_threads > 1 && rows * n >= (1 << 16))
    for (int64_t r = 0; r < rows; r++)
        silu_mul_row(gate + r * gate_stride, up + r * up_stride, out + r * n, n);
}
