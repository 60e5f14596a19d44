/* Q8_0 x Q8_0 matrix products for the engine (velollmd.engine._matmul): ggml-cpu's exact int32
 * block sums (ggml_vec_dot_q8_0_q8_0's), with one float rounding per block instead of ggml's one
 * per 4-byte lane, on weights packed at load (q8weight.pack_rows) so that one vector instruction
 * multiplies 16 (zmm) or 8 (ymm) rows by 4 bytes of an input.
 *
 * y (B, N) = x (B, K) @ w (N, K)^T with both sides in blocks of 32: xq (B, K) int8 in [-127, 127]
 * (vl_quantize_q8_0 never makes -128, which the AVX2 path's sign trick could not take) and xd
 * (B, K / 32) float32 scales; w packed by groups of 16 rows (N padded with zero rows to G = ceil(N / 16)
 * groups): wp (G, K / 32, 8, 16, 4) bytes, byte [g, j, q, r, i] = w[16g + r, 32j + 4q + i] in the
 * format the path reads: VL_Q8_SIGNED (int8 w: portable, AVX2) or VL_Q8_UNSIGNED (uint8 w + 128:
 * vpdpbusd's unsigned operand, AVX-512 VNNI and AVX-VNNI); wd (G, K / 32, 16) float32 the F16 scales
 * of those rows. For each (input, row) pair: per block j in order, the exact int32 sum s_j of its
 * 32 products, then acc = fma(wd * xd, (float)s_j, acc) (wd * xd is exact: two F16 values; s_j is
 * exact in float). Every path computes exactly this, so y does not depend on the path, the format,
 * the batch size B or the thread count.
 *
 * path: VL_Q8_BEST (the fastest this CPU has for that format) or one of VL_Q8_PORTABLE, VL_Q8_AVX2,
 * VL_Q8_VNNI, VL_Q8_AVXVNNI; returns the path that ran, -1 (that path is not available here or
 * reads the other format: nothing written) or -2 (out of memory).
 */
#include <stdint.h>

int vl_matmul_q8_0(const int8_t *xq, const float *xd, const void *wp, const float *wd, float *y,
                   int64_t B, int64_t K, int64_t N, int num_threads, int path, int format);
int vl_q8_0_paths(void);            /* bit (1 << path) set for each available path */
int vl_q8_0_format(int path);       /* the format a path reads (VL_Q8_BEST: the fastest's); -1: not here */

/* ggml's quantize_row_q8_0_ref over num_blocks blocks of 32 floats: q (num_blocks * 32) int8,
 * d (num_blocks) the F16 scale as float32 (vecdot.quantize_q8_0's values, bit for bit). */
void vl_quantize_q8_0(const float *x, int8_t *q, float *d, int64_t num_blocks);

#define VL_Q8_BEST 0
#define VL_Q8_PORTABLE 1
#define VL_Q8_AVX2 2
#define VL_Q8_VNNI 3
#define VL_Q8_AVXVNNI 4

#define VL_Q8_SIGNED 0
#define VL_Q8_UNSIGNED 1
