/* Q4_0 and Q5_0 x Q8_0 matrix-vector products for the engine (velollmd.engine._matmul), as
 * ggml-cpu's ggml_vec_dot_q4_0_q8_0 and ggml_vec_dot_q5_0_q8_0 compute them on x86.
 *
 * y (B, N) = x (B, K) @ w (N, K)^T in blocks of 32. x as Q8_0 (matmul_q8.h's vl_quantize_q8_0):
 * xq (B, K) int8, xd (B, K / 32) float32. w as its GGUF blocks, split by row: qs (N, K / 2) the
 * blocks' 16 nibble bytes as stored (value i in the low nibble of byte i, value 16 + i in its
 * high nibble), wd (N, K / 32) the F16 scales as float32; Q5_0 also qh (N, K / 8) the blocks'
 * 4 bytes of fifth bits (bit i of the little-endian uint32: bit 4 of value i). The weight is
 * nibble - 8 (Q4_0), or nibble + 16 * bit - 16 (Q5_0).
 *
 * Per (input, row) pair and block j: 8 exact int32 lane sums (lane l: values 4l..4l+3 of
 * weight * x), added into 8 float lanes as fma(wd * xd, lane, acc); then ggml's hsum_float_8
 * of the lanes: matmul_q8.c's arithmetic on the unpacked values. Every path (portable C, AVX2,
 * AVX-512 VNNI) computes the same int sums and the same float operations in the same order, so
 * y does not depend on the path, the batch size B or the thread count.
 *
 * path: matmul_q8.h's VL_Q8_BEST, VL_Q8_PORTABLE, VL_Q8_AVX2 or VL_Q8_VNNI; returns the path
 * that ran, or -1 (that path is not available here: nothing written).
 */
#include <stdint.h>

int vl_matmul_q4_0(const int8_t *xq, const float *xd, const uint8_t *qs, const float *wd, float *y,
                   int64_t B, int64_t K, int64_t N, int num_threads, int path);
int vl_matmul_q5_0(const int8_t *xq, const float *xd, const uint8_t *qs, const uint8_t *qh, const float *wd,
                   float *y, int64_t B, int64_t K, int64_t N, int num_threads, int path);
