/* Batched matrix-vector products for the engine's decode step (velollmd.engine._matmul).
 *
 * y (B, N) = x (B, K) @ w (N, K)^T, all float32 row-major, w in the GGUF's own (out, in)
 * layout. Each weight row is read from memory once for all B inputs (OpenBLAS's sgemm packs
 * the whole matrix first, which costs more than the product when B is a handful of decoding
 * sequences). Every y[b, n] is summed in the same order whatever B and the thread count are:
 * a sequence's logits do not depend on what it is batched with (with AVX-512, groups of 8 inputs
 * take a wider tile that does the same 8-lane sums, bit for bit).
 */
#include <stdint.h>

void vl_matmul_nt(const float *x, const float *w, float *y, int64_t B, int64_t K, int64_t N,
                  int num_threads);
int vl_max_threads(void);
