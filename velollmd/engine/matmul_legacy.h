/* Q4_0, Q5_0 x Q8_0 and Q4_1, Q5_1 x Q8_1 matrix-vector products for the engine
 * (velollmd.engine._matmul), as ggml-cpu's ggml_vec_dot_q4_0_q8_0, _q5_0_q8_0, _q4_1_q8_1 and
 * _q5_1_q8_1 compute them on x86.
 *
 * y (B, N) = x (B, K) @ w (N, K)^T in blocks of 32. x as Q8_0 (matmul_q8.h's vl_quantize_q8_0):
 * xq (B, K) int8, xd (B, K / 32) float32; as Q8_1 the same plus xs (B, K / 32) float32, each
 * block's F16 d * sum(xq) (d before its F16 rounding). w as its GGUF blocks, split by row: qs
 * (N, K / 2) the blocks' 16 nibble bytes as stored (value i in the low nibble of byte i, value
 * 16 + i in its high nibble), wd (N, K / 32) the F16 scales as float32; Q5_* also qh (N, K / 8)
 * the blocks' 4 bytes of fifth bits (bit i of the little-endian uint32: bit 4 of value i); Q*_1
 * also wm (N, K / 32) the F16 mins as float32. The integer of a weight is its nibble (plus 16 *
 * its fifth bit), minus 8 (Q4_0) or 16 (Q5_0); the weight is wd * integer (+ wm for Q*_1).
 *
 * Per (input, row) pair and block j: 8 exact int32 lane sums (lane l: values 4l..4l+3 of
 * integer * x), added into 8 float lanes as fma(wd * xd, lane, acc); then ggml's hsum_float_8
 * of the lanes: matmul_q8.c's arithmetic on the unpacked integers. Q*_1 add ggml's min term,
 * summs = fma(wm, xs, summs) per block in order, to the sum of the lanes. Every path (portable
 * C, AVX2, AVX-512 VNNI) computes the same int sums and the same float operations in the same
 * order, so y does not depend on the path, the batch size B or the thread count.
 *
 * path: matmul_q8.h's VL_Q8_BEST, VL_Q8_PORTABLE, VL_Q8_AVX2 or VL_Q8_VNNI; returns the path
 * that ran, or -1 (that path is not available here: nothing written).
 */
#include <stdint.h>

int vl_matmul_q4_0(const int8_t *xq, const float *xd, const uint8_t *qs, const float *wd, float *y,
                   int64_t B, int64_t K, int64_t N, int num_threads, int path);
int vl_matmul_q5_0(const int8_t *xq, const float *xd, const uint8_t *qs, const uint8_t *qh, const float *wd,
                   float *y, int64_t B, int64_t K, int64_t N, int num_threads, int path);
int vl_matmul_q4_1(const int8_t *xq, const float *xd, const float *xs, const uint8_t *qs, const float *wd,
                   const float *wm, float *y, int64_t B, int64_t K, int64_t N, int num_threads, int path);
int vl_matmul_q5_1(const int8_t *xq, const float *xd, const float *xs, const uint8_t *qs, const uint8_t *qh,
                   const float *wd, const float *wm, float *y, int64_t B, int64_t K, int64_t N,
                   int num_threads, int path);
