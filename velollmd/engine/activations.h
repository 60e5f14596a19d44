/* The FFN's gated activation, compiled (velollmd.engine._matmul, activations.c).
 *
 * out[r, j] = silu(gate[r, j]) * up[r, j] for rows r < rows, columns j < n, silu(x) = x / (1 + e^-x);
 * gate and up rows are gate_stride and up_stride floats apart (e.g. the two halves of one
 * fused gate_up product), out (rows, n) contiguous. e^-|x| from a polynomial (vecf.h's exp8),
 * so within a few float32 ulps of ops.silu(gate) * up, its reference; each element alone: a
 * row's result does not depend on its batch or the thread count.
 */
#include <stdint.h>

void vl_silu_mul(const float *gate, const float *up, float *out, int64_t rows, int64_t n,
                 int64_t gate_stride, int64_t up_stride, int num_threads);
