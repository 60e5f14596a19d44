/* attention.c over an f16 KV cache for x86-64-v3 CPUs: each 8 K/V elements loaded as 8 floats
 * by F16C's vcvtph2ps (_mm256_cvtph_ps), exactly; the rest is attention.c's arithmetic, so a
 * result equals the float32 kernel's on the same cache converted to float32 (the v3 build).
 * attention_f16.c picks this build when the CPU has AVX2, FMA and F16C, its portable one
 * otherwise. Other compilers and CPUs: nothing here. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("arch=x86-64-v3")
#include <immintrin.h>
#include <stdint.h>

#define VL_CLONES
#include "vecf.h"

#define KV_T _Float16
#define KV_NAME(name) name##_f16c
static inline __attribute__((always_inline)) v8f load_kv8(const _Float16 *p) {
    return (v8f)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

#include "attention.c"
#endif
