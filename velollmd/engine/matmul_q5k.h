/* Q5_K x Q8_K matrix-vector products for the engine (velollmd.engine._matmul), as ggml-cpu's
 * ggml_vec_dot_q5_K_q8_K computes them on AVX2.
 *
 * y (B, N) = x (B, K) @ w (N, K)^T in super-blocks of 256. x as Q8_K (matmul_q4k.h). w as its
 * GGUF blocks, unpacked by row as Q4_K's (matmul_q4k.h: qs, sc, mn, wd, wdmin) plus qh (N, K / 8)
 * each super-block's 32 high-bit bytes as stored: bit s of byte i is the 5th bit of value i of
 * sub-block s (values 0..31).
 *
 * Per (input, row) pair and super-block: the 8 scale lanes as Q4_K's, acc[l] = fma(d, sumi[l],
 * acc[l]); the mins as one int32 per super-block, the sum over pairs m of mn[2m] * (bs[4m] +
 * bs[4m+1]) + mn[2m+1] * (bs[4m+2] + bs[4m+3]), added as summs = fma(dmin, it, summs); then
 * hsum_float_8(acc) + summs. The same float operations in the same order for every pair, path,
 * batch size and thread count (scale_min_tiles.h).
 *
 * path: matmul_q8.h's VL_Q8_BEST, VL_Q8_PORTABLE or VL_Q8_AVX2; returns the path that ran, or -1.
 */
#include <stdint.h>

int vl_matmul_q5_k(const int8_t *xq, const float *xd, const int16_t *xbsums, const uint8_t *qs,
                   const uint8_t *qh, const uint8_t *sc, const uint8_t *mn, const float *wd,
                   const float *wdmin, float *y, int64_t B, int64_t K, int64_t N, int num_threads, int path);
