/* Q8_0 x Q8_0 matrix-vector products for the engine (velollmd.engine._matmul), as ggml-cpu's
 * ggml_vec_dot_q8_0_q8_0 computes them.
 *
 * y (B, N) = x (B, K) @ w (N, K)^T with both sides in blocks of 32: xq (B, K) and wq (N, K) int8,
 * xd (B, K / 32) and wd (N, K / 32) float32 scales (F16 values). For each (input, row) pair and
 * block j: 8 exact int32 lane sums (lane l: bytes 4l..4l+3 of the block), each converted to
 * float and added into 8 float lanes as fma(wd * xd, lane, acc); then ggml's hsum_float_8 of
 * the lanes. Every path (portable C, AVX2, AVX-512 VNNI) computes the same int sums and the same
 * float operations in the same order, so y does not depend on the path (with FMA hardware), the
 * batch size B or the thread count.
 *
 * path: VL_Q8_BEST (the fastest this CPU has) or one of VL_Q8_PORTABLE, VL_Q8_AVX2, VL_Q8_VNNI;
 * returns the path that ran, or -1 (that path is not available here: nothing written).
 */
#include <stdint.h>

int vl_matmul_q8_0(const int8_t *xq, const float *xd, const int8_t *wq, const float *wd, float *y,
                   int64_t B, int64_t K, int64_t N, int num_threads, int path);
int vl_q8_0_paths(void);    /* bit (1 << path) set for each available path */

/* ggml's quantize_row_q8_0_ref over num_blocks blocks of 32 floats: q (num_blocks * 32) int8,
 * d (num_blocks) the F16 scale as float32 (vecdot.quantize_q8_0's values, bit for bit). */
void vl_quantize_q8_0(const float *x, int8_t *q, float *d, int64_t num_blocks);

#define VL_Q8_BEST 0
#define VL_Q8_PORTABLE 1
#define VL_Q8_AVX2 2
#define VL_Q8_VNNI 3
