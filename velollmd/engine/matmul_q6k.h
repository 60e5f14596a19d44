/* Q6_K x Q8_K matrix-vector products for the engine (velollmd.engine._matmul), as ggml-cpu's
 * ggml_vec_dot_q6_K_q8_K computes them on AVX2.
 *
 * y (B, N) = x (B, K) @ w (N, K)^T in super-blocks of 256. x as Q8_K (matmul_q4k.h). w
 * unpacked by row: wq (N, K) uint8 the 6-bit values q (0..63; the weight is d * sc * (q - 32))
 * in x's order; sc (N, K / 16) int8 one scale per 16 values; wd (N, K / 256) F16 d as float32.
 *
 * Per (input, row) pair and super-block: d = xd * wd; 8 int32 lanes, lane l = sum over the 8
 * chunks of 32 values k of sc[2k + l / 4] * (q . x over values 32k + 4l .. 32k + 4l + 3), minus
 * 32 * (sc[2l] * bsums[2l] + sc[2l + 1] * bsums[2l + 1]) (ggml's offset term through the
 * bsums: a different split into lanes than (q - 32) . x, so a different float sum), added as
 * acc[l] = fma(d, lane, acc[l]); then ggml's hsum_float_8. Exact int sums and the same float
 * operations in the same order for every pair, path, batch size and thread count.
 *
 * path: matmul_q8.h's VL_Q8_BEST, VL_Q8_PORTABLE or VL_Q8_AVX2; returns the path that ran, or -1.
 */
#include <stdint.h>

int vl_matmul_q6_k(const int8_t *xq, const float *xd, const int16_t *xbsums, const uint8_t *wq, const int8_t *sc,
                   const float *wd, float *y, int64_t B, int64_t K, int64_t N, int num_threads, int path);
