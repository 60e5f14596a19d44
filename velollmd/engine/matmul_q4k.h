/* Q4_K x Q8_K matrix-vector products for the engine (velollmd.engine._matmul), as ggml-cpu's
 * ggml_vec_dot_q4_K_q8_K computes them on AVX2.
 *
 * y (B, N) = x (B, K) @ w (N, K)^T in super-blocks of 256. x as Q8_K: xq (B, K) int8, xd
 * (B, K / 256) float32, xbsums (B, K / 16) int16 (sums of 16 values). w as its GGUF blocks,
 * unpacked by row: qs (N, K / 2) the block's nibble bytes as stored (32 bytes j: sub-block 2j in
 * the low nibbles, 2j + 1 in the high), sc and mn (N, K / 32) the 6-bit scales and mins, wd and
 * wdmin (N, K / 256) the F16 d and dmin as float32.
 *
 * Per (input, row) pair and super-block i: d = xd * wd, dmin = -xd * wdmin; 8 int32 lanes
 * sumi[l] = sum over sub-blocks s of sc[s] * (lane l of s's 32 byte products: values 4l..4l+3),
 * added as acc[l] = fma(d, sumi[l], acc[l]); 4 int32 lanes of mins times pair sums of bsums,
 * acc_m[m] = fma(dmin, mn[2m] * (bs[4m] + bs[4m+1]) + mn[2m+1] * (bs[4m+2] + bs[4m+3]), acc_m[m]);
 * then hsum_float_8(acc) + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3])). Exact int sums and
 * the same float operations in the same order for every pair: y does not depend on the batch
 * size B, the thread count or the path.
 *
 * path: matmul_q8.h's VL_Q8_BEST, VL_Q8_PORTABLE or VL_Q8_AVX2 (no VNNI path: ggml has none for
 * Q4_K either); returns the path that ran, or -1 (not available here: nothing written).
 */
#include <stdint.h>

int vl_matmul_q4_k(const int8_t *xq, const float *xd, const int16_t *xbsums, const uint8_t *qs,
                   const uint8_t *sc, const uint8_t *mn, const float *wd, const float *wdmin, float *y,
                   int64_t B, int64_t K, int64_t N, int num_threads, int path);

/* ggml's quantize_row_q8_K_ref over num_blocks blocks of 256 floats: q (num_blocks * 256) int8,
 * d (num_blocks) float32, bsums (num_blocks * 16) int16 (vecdot.quantize_q8_k's values). */
void vl_quantize_q8_k(const float *x, int8_t *q, float *d, int16_t *bsums, int64_t num_blocks);
