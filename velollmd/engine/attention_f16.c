/* vl_decode_attention_f16 (attention.h): attention.c over an f16 KV cache. Two builds of it: the
 * F16C one (attention_f16c.c, x86-64-v3) where the CPU has AVX2, FMA and F16C, and this file's
 * portable one (GCC's _Float16 conversions, attention.c's clones) everywhere else. Both load K/V
 * as floats exactly and then do attention.c's float arithmetic. */
#include <stdint.h>

#include "vecf.h"

#define KV_T _Float16
#define KV_NAME(name) name##_f16_portable
typedef _Float16 v8h __attribute__((vector_size(16)));
static inline __attribute__((always_inline)) v8f load_kv8(const _Float16 *p) {
    v8h h;
    memcpy(&h, p, sizeof h);
    return __builtin_convertvector(h, v8f);
}

#include "attention.c"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
void vl_decode_attention_split_f16c(const float *q, const _Float16 *k_cache, const _Float16 *v_cache,
                                    const int64_t *block_tables, const int64_t *context_lens,
                                    const int64_t *starts, float *scores, float *out, int64_t B, int64_t n_head,
                                    int64_t n_head_kv, int64_t head_dim, int64_t block_size, int64_t max_blocks,
                                    float scale, float softcap, int num_threads, int64_t heads_per_unit);

static int has_f16c(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
#else
static int has_f16c(void) {
    return 0;
}
#endif

int vl_decode_attention_f16(const float *q, const uint16_t *k_cache, const uint16_t *v_cache,
                            const int64_t *block_tables, const int64_t *context_lens, const int64_t *starts,
                            float *scores, float *out, int64_t B, int64_t n_head, int64_t n_head_kv,
                            int64_t head_dim, int64_t block_size, int64_t max_blocks, float scale, float softcap,
                            int num_threads, int64_t heads_per_unit, int portable) {
    const _Float16 *k = (const _Float16 *)k_cache, *v = (const _Float16 *)v_cache;
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    if (!portable && has_f16c()) {
        vl_decode_attention_split_f16c(q, k, v, block_tables, context_lens, starts, scores, out, B, n_head,
                                       n_head_kv, head_dim, block_size, max_blocks, scale, softcap, num_threads,
                                       heads_per_unit);
        return 1;
    }
#endif
    (void)has_f16c;
    vl_decode_attention_split_f16_portable(q, k, v, block_tables, context_lens, starts, scores, out, B, n_head,
                                           n_head_kv, head_dim, block_size, max_blocks, scale, softcap,
                                           num_threads, heads_per_unit);
    return 0;
}
