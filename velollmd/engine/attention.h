/* Decode attention straight from the paged KV cache (velollmd.engine._matmul, attention.c).
 *
 * B sequences, one new token each: q (B, n_head, head_dim) attends over its sequence's first
 * context_lens[b] positions, read where they live in one layer's pages, k_cache and v_cache
 * (num_blocks, block_size, n_head_kv, head_dim); position t of sequence b is in block
 * block_tables[b, t / block_size] (block_tables (B, max_blocks)). Query head h reads KV head
 * h / (n_head / n_head_kv). scores (B, n_head, max_blocks * block_size) is scratch; out
 * (B, n_head, head_dim). No dense copy of the K/V is made. A unit of work is one sequence's
 * KV heads [h0, h0 + heads_per_unit) (0: all of them, one unit per sequence): it walks the
 * sequence's slots once, each slot's rows of those heads read once (for the scores of every
 * query head over them, then for the weighted V); units run in parallel over num_threads. Each
 * output is summed in one fixed order whatever the units: a sequence's result does not depend
 * on its batch, the thread count or heads_per_unit. The caller checks the block ids and lengths
 * (kvcache.py).
 *
 * starts (B,), or NULL for all 0: sequence b's first visible position (a sliding window's
 * first key, < context_lens[b]); the positions before it are skipped, their blocks never read.
 * softcap > 0 (gemma2): each score becomes softcap * tanh(score / softcap) before the softmax;
 * 0: none.
 */
#include <stdint.h>

void vl_decode_attention(const float *q, const float *k_cache, const float *v_cache,
                         const int64_t *block_tables, const int64_t *context_lens, const int64_t *starts,
                         float *scores, float *out, int64_t B, int64_t n_head, int64_t n_head_kv,
                         int64_t head_dim, int64_t block_size, int64_t max_blocks, float scale, float softcap,
                         int num_threads);

void vl_decode_attention_split(const float *q, const float *k_cache, const float *v_cache,
                               const int64_t *block_tables, const int64_t *context_lens, const int64_t *starts,
                               float *scores, float *out, int64_t B, int64_t n_head, int64_t n_head_kv,
                               int64_t head_dim, int64_t block_size, int64_t max_blocks, float scale,
                               float softcap, int num_threads, int64_t heads_per_unit);

/* The same over an f16 KV cache (attention_f16.c: IEEE half K/V, numpy's float16), each element
 * read as its exact float; the result equals vl_decode_attention_split's on that cache converted
 * to float32 (the same arithmetic after the load). portable = 0: the F16C build (vcvtph2ps) when
 * the CPU has AVX2, FMA and F16C; 1: the portable build (tests compare the two). Returns 1 when
 * the F16C build ran, 0 for the portable one. */
int vl_decode_attention_f16(const float *q, const uint16_t *k_cache, const uint16_t *v_cache,
                            const int64_t *block_tables, const int64_t *context_lens, const int64_t *starts,
                            float *scores, float *out, int64_t B, int64_t n_head, int64_t n_head_kv,
                            int64_t head_dim, int64_t block_size, int64_t max_blocks, float scale, float softcap,
                            int num_threads, int64_t heads_per_unit, int portable);
