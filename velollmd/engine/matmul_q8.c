/* See matmul_q8.h. Three paths with one arithmetic on the packed layout: portable C (plain loops,
 * built twice by target_clones like matmul.c), AVX2 (maddubs/madd on sign-adjusted bytes, 8 rows
 * a vector) and AVX-512 VNNI (vpdpbusd on 512-bit vectors, 16 rows a vector). */
#include "matmul_q8.h"

#include <stdlib.h>
#include <string.h>

#include "qdot.h"
#include "tasks.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define QK 32               /* values per Q8_0 block */
#define GROUP 16            /* weight rows interleaved in one packed group */
#define GROUP_BLOCK 512     /* bytes of one group's block: 8 vectors of 16 rows x 4 bytes */
#define MAX_COLS 8          /* inputs a tile multiplies at once */
#define GROUPS_PER_TASK 4   /* a task's weights: 64 rows (64 KiB at K = 1024) */
/* The x86 tiles prefetch the packed weights PF_NEAR bytes ahead for 1-2 inputs, PF_FAR for more
 * (measured: from 3 inputs on the far distance was 1.2-1.4x faster, for 1-2 the near one). */
#define PF_NEAR 2048
#define PF_FAR 8192
#define PF_FAR_COLS 3

/* The 4 input bytes x[4q..4q+3] as one int32 (a vpbroadcastd's source). */
static inline __attribute__((always_inline)) int32_t x_word(const int8_t *x, int q) {
    int32_t v;
    memcpy(&v, x + 4 * q, sizeof v);
    return v;
}

/* One group's `cols` inputs (constants at each call site): y[c * N + r] for r < rows (<= 16),
 * x, xd, y: the first input's. wp, wd: the group's (K / 32, 512) bytes and (K / 32, 16) scales. */
static inline __attribute__((always_inline)) void tile_portable(const int8_t *x, const float *xd,
                                                               const uint8_t *wp, const float *wd, float *y,
                                                               int64_t K, int64_t N, int rows, int cols) {
    int64_t nb = K / QK;
    float acc[MAX_COLS][GROUP] = {{0}};
    for (int64_t j = 0; j < nb; j++) {
        const uint8_t *wb = wp + j * GROUP_BLOCK;
        for (int c = 0; c < cols; c++) {
            const int8_t *xb = x + c * K + j * QK;
            int32_t s[GROUP] = {0};
            for (int q = 0; q < 8; q++)
                for (int r = 0; r < GROUP; r++)
                    for (int i = 0; i < 4; i++)
                        s[r] += ((int32_t)wb[64 * q + 4 * r + i] - 128) * (int32_t)xb[4 * q + i];
            for (int r = 0; r < GROUP; r++)
                acc[c][r] = __builtin_fmaf(wd[j * GROUP + r] * xd[c * nb + j], (float)s[r], acc[c][r]);
        }
    }
    for (int c = 0; c < cols; c++)
        for (int r = 0; r < rows; r++)
            y[c * N + r] = acc[c][r];
}

/* TILE(args..., cols) with cols a constant (1..MAXC) at each call: the tiles are always_inline. */
#define TILE_COLS(TILE, MAXC, cols, ...)                                                            \
    switch (cols) {                                                                                 \
    case 1: TILE(__VA_ARGS__, 1); break;                                                            \
    case 2: TILE(__VA_ARGS__, 2); break;                                                            \
    case 3: TILE(__VA_ARGS__, 3); break;                                                            \
    case 4: TILE(__VA_ARGS__, 4); break;                                                            \
    case 5: if ((MAXC) >= 5) TILE(__VA_ARGS__, 5); break;                                           \
    case 6: if ((MAXC) >= 6) TILE(__VA_ARGS__, 6); break;                                           \
    case 7: if ((MAXC) >= 7) TILE(__VA_ARGS__, 7); break;                                           \
    default: if ((MAXC) >= 8) TILE(__VA_ARGS__, 8); break;                                          \
    }

/* The tasks' shared loop: inputs in chunks of up to C, each chunk against the task's groups
 * [g0, g1) in order, so that a chunk's inputs stay in L1 and the task's weights in L2. Every
 * (row, input) pair gets the same arithmetic whatever its chunk. The variable arguments: the
 * tile's extra ones before xd (the VNNI tile's bias, with a trailing comma). */
#define GROUPS_BODY(TILE, C, ...)                                                                   \
    int64_t nb = K / QK;                                                                            \
    for (int64_t b = 0; b < B; b += (C)) {                                                          \
        int cols = B - b < (C) ? (int)(B - b) : (C);                                                \
        for (int64_t g = g0; g < g1; g++)                                                           \
            TILE_COLS(TILE, C, cols, xq + b * K, __VA_ARGS__ xd + b * nb, wp + g * nb * GROUP_BLOCK, \
                      wd + g * nb * GROUP, y + b * N + g * GROUP, K, N, group_rows(g, N))            \
    }

/* Rows of group g that exist (the last group's padding rows are computed, not stored). */
static inline int group_rows(int64_t g, int64_t N) {
    return N - g * GROUP < GROUP ? (int)(N - g * GROUP) : GROUP;
}

VL_CLONES
static void groups_portable(const int8_t *xq, const float *xd, const uint8_t *wp, const float *wd, float *y,
                            int64_t B, int64_t K, int64_t N, int64_t g0, int64_t g1) {
    GROUPS_BODY(tile_portable, 4)
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VL_Q8_X86 1
#include <immintrin.h>

#define T_AVX2 __attribute__((target("avx2,fma"), always_inline))
#define T_VNNI __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni"), always_inline))

/* Rows [8 h0, 8 (h0 + halves)) of a group (halves: 1 or 2), `cols` (<= 4) inputs: per 4-byte step
 * q, the signed weights (w_u ^ 0x80) and their magnitudes once, then per input ggml's sign trick:
 * maddubs(|w|, x with w's sign) to int16 pairs (at most 2 * 128 * 127: no saturation; x is never
 * -128), madd to the row's int32 lane. The block's exact int32 sums, then the float part as the
 * other paths. */
static inline T_AVX2 void halves_avx2(const int8_t *x, const float *xd, const uint8_t *wp, const float *wd,
                                      float *y, int64_t K, int64_t N, int h0, int halves, int rows, int cols) {
    int64_t nb = K / QK;
    const __m256i ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8((char)0x80);
    __m256 acc[2][MAX_COLS];
    for (int h = 0; h < halves; h++)
        for (int c = 0; c < cols; c++)
            acc[h][c] = _mm256_setzero_ps();
    for (int64_t j = 0; j < nb; j++) {
        const uint8_t *wb = wp + j * GROUP_BLOCK;
        for (int line = 0; h0 == 0 && line < GROUP_BLOCK; line += 64)
            __builtin_prefetch(wb + (cols >= PF_FAR_COLS ? PF_FAR : PF_NEAR) + line, 0, 2);
        for (int h = 0; h < halves; h++) {
            __m256i s[MAX_COLS];
            for (int c = 0; c < cols; c++)
                s[c] = _mm256_setzero_si256();
            for (int q = 0; q < 8; q++) {
                __m256i w = _mm256_loadu_si256((const __m256i *)(wb + 64 * q + 32 * (h0 + h)));
                w = _mm256_xor_si256(w, flip);
                __m256i aw = _mm256_sign_epi8(w, w);
                for (int c = 0; c < cols; c++) {
                    __m256i xv = _mm256_set1_epi32(x_word(x + c * K + j * QK, q));
                    __m256i p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, w));
                    s[c] = _mm256_add_epi32(s[c], _mm256_madd_epi16(p, ones));
                }
            }
            __m256 d = _mm256_loadu_ps(wd + j * GROUP + 8 * (h0 + h));
            for (int c = 0; c < cols; c++)
                acc[h][c] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(xd[c * nb + j])),
                                            _mm256_cvtepi32_ps(s[c]), acc[h][c]);
        }
    }
    for (int h = 0; h < halves; h++)
        for (int c = 0; c < cols; c++) {
            float out[8];
            _mm256_storeu_ps(out, acc[h][c]);
            for (int r = 8 * (h0 + h); r < rows && r < 8 * (h0 + h + 1); r++)
                y[c * N + r] = out[r % 8];
        }
}

/* 1-2 inputs: both halves in one pass over the blocks (the weights stream from memory once, at
 * the rate of the work); more: a pass per half (16 accumulators would not fit 16 registers). */
static inline T_AVX2 void tile_avx2(const int8_t *x, const float *xd, const uint8_t *wp, const float *wd,
                                    float *y, int64_t K, int64_t N, int rows, int cols) {
    if (cols <= 2) {
        halves_avx2(x, xd, wp, wd, y, K, N, 0, rows > 8 ? 2 : 1, rows, cols);
        return;
    }
    halves_avx2(x, xd, wp, wd, y, K, N, 0, 1, rows, cols);
    if (rows > 8)
        halves_avx2(x, xd, wp, wd, y, K, N, 1, 1, rows, cols);
}

/* VNNI: per block the group's 8 weight vectors (unsigned, w + 128) once, then per input
 * int32 acc = -128 * sum(x's block) (bias) + 8 vpdpbusd(w_u, broadcast x[4q..4q+3]): the 16 rows'
 * exact block sums; then fma(wd * xd, sum, acc) in float. */
static inline T_VNNI void tile_vnni(const int8_t *x, const int32_t *bias, const float *xd, const uint8_t *wp,
                                    const float *wd, float *y, int64_t K, int64_t N, int rows, int cols) {
    int64_t nb = K / QK;
    __m512 acc[MAX_COLS];
    for (int c = 0; c < cols; c++)
        acc[c] = _mm512_setzero_ps();
    for (int64_t j = 0; j < nb; j++) {
        const uint8_t *wb = wp + j * GROUP_BLOCK;
        for (int line = 0; line < GROUP_BLOCK; line += 64)
            __builtin_prefetch(wb + (cols >= PF_FAR_COLS ? PF_FAR : PF_NEAR) + line, 0, 2);
        __m512i w[8];
        for (int q = 0; q < 8; q++)
            w[q] = _mm512_loadu_si512((const void *)(wb + 64 * q));
        __m512i s[MAX_COLS];
        for (int c = 0; c < cols; c++)
            s[c] = _mm512_set1_epi32(bias[c * nb + j]);
        for (int q = 0; q < 8; q++)         /* the inputs' chains interleaved: vpdpbusd's latency */
            for (int c = 0; c < cols; c++)
                s[c] = _mm512_dpbusd_epi32(s[c], w[q], _mm512_set1_epi32(x_word(x + c * K + j * QK, q)));
        __m512 d = _mm512_loadu_ps(wd + j * GROUP);
        for (int c = 0; c < cols; c++)
            acc[c] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(xd[c * nb + j])),
                                     _mm512_cvtepi32_ps(s[c]), acc[c]);
    }
    __mmask16 valid = (__mmask16)((1u << rows) - 1);
    for (int c = 0; c < cols; c++)
        _mm512_mask_storeu_ps(y + c * N, valid, acc[c]);
}

__attribute__((target("avx2,fma")))
static void groups_avx2(const int8_t *xq, const float *xd, const uint8_t *wp, const float *wd, float *y,
                        int64_t B, int64_t K, int64_t N, int64_t g0, int64_t g1) {
    GROUPS_BODY(tile_avx2, 4)
}

__attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))
static void groups_vnni(const int8_t *xq, const int32_t *bias, const float *xd, const uint8_t *wp,
                        const float *wd, float *y, int64_t B, int64_t K, int64_t N, int64_t g0, int64_t g1) {
    GROUPS_BODY(tile_vnni, MAX_COLS, bias + b * nb,)
}
#endif

/* Lane-wise helpers for quantize_block, on the bits (no vector ?: in C). */
static inline __attribute__((always_inline)) v8f abs8(v8f v) {
    return (v8f)((v8i)v & 0x7fffffff);
}

static inline __attribute__((always_inline)) v8f max8(v8f a, v8f b) {
    v8i a_larger = a > b;                               /* -1 where a > b, else 0 */
    return (v8f)(((v8i)a & a_larger) | ((v8i)b & ~a_larger));
}

/* One block: d = amax / 127 rounded to F16; q = roundf(x * (1 / d)) (1 / d before d's rounding,
 * as ggml's quantize_row_q8_0_ref), computed as floor(|x| * (1 / d) + 0.49999997) with x's sign:
 * C's roundf for values >= 0 below 2^22 (vecdot.py does the same in numpy). The product is
 * rounded before the addition, as in numpy: fp-contract=off on the caller, which inlines this. */
static inline __attribute__((always_inline)) void quantize_block(const float *x, int8_t *q, float *d) {
    v8f amax = abs8(load8(x));
    for (int k = 8; k < QK; k += 8)
        amax = max8(amax, abs8(load8(x + k)));
    float top = 0.0f;
    for (int l = 0; l < 8; l++)
        top = amax[l] > top ? amax[l] : top;
    float scale = top / 127.0f;
    float inverse = scale != 0.0f ? 1.0f / scale : 0.0f;
    for (int k = 0; k < QK; k += 8) {
        v8f v = load8(x + k), magnitude = abs8(v) * inverse + 0.49999997f;
        for (int l = 0; l < 8; l++)
            magnitude[l] = __builtin_floorf(magnitude[l]);
        v8i values = __builtin_convertvector((v8f)((v8i)magnitude | ((v8i)v & (int32_t)0x80000000)), v8i);
        for (int l = 0; l < 8; l++)
            q[k + l] = (int8_t)values[l];
    }
    *d = (float)(_Float16)scale;
}

VL_CLONES __attribute__((optimize("fp-contract=off")))
void vl_quantize_q8_0(const float *x, int8_t *q, float *d, int64_t num_blocks) {
    for (int64_t j = 0; j < num_blocks; j++)
        quantize_block(x + j * QK, q + j * QK, d + j);
}

int vl_q8_0_paths(void) {
    static int known = -1;
    if (known >= 0)
        return known;
    int paths = 1 << VL_Q8_PORTABLE;
#ifdef VL_Q8_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        paths |= 1 << VL_Q8_AVX2;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
            && __builtin_cpu_supports("avx512vnni"))
            paths |= 1 << VL_Q8_VNNI;
    }
#endif
    known = paths;
    return known;
}

static int best_path(int paths) {
    for (int path = VL_Q8_VNNI; path > VL_Q8_PORTABLE; path--)
        if (paths & (1 << path))
            return path;
    return VL_Q8_PORTABLE;
}

/* bias[c, j] = -128 * sum(x[c, block j]): the VNNI tile's start, which undoes its w + 128. */
static void block_bias(const int8_t *xq, int32_t *bias, int64_t num_blocks) {
    for (int64_t j = 0; j < num_blocks; j++) {
        int32_t sum = 0;
        for (int i = 0; i < QK; i++)
            sum += xq[j * QK + i];
        bias[j] = -128 * sum;
    }
}

int vl_matmul_q8_0(const int8_t *xq, const float *xd, const uint8_t *wp, const float *wd, float *y,
                   int64_t B, int64_t K, int64_t N, int num_threads, int path) {
    int paths = vl_q8_0_paths();
    if (path == VL_Q8_BEST)
        path = best_path(paths);
    if (path < VL_Q8_PORTABLE || path > VL_Q8_VNNI || !(paths & (1 << path)))
        return -1;
    int32_t *bias = NULL;
    if (path == VL_Q8_VNNI) {
        bias = malloc((size_t)(B * (K / QK)) * sizeof *bias + 1);
        if (bias)
            block_bias(xq, bias, B * (K / QK));
        else
            path = VL_Q8_AVX2;                  /* the same results, without the bias array */
    }
    int64_t num_groups = (N + GROUP - 1) / GROUP;
    int64_t num_tasks = row_tasks(num_groups, GROUPS_PER_TASK, &num_threads);
#pragma omp parallel for schedule(static) num_threads(num_threads) if (num_threads > 1)
    for (int64_t task = 0; task < num_tasks; task++) {
        int64_t g0 = task * GROUPS_PER_TASK, g1 = task_end(g0, GROUPS_PER_TASK, num_groups);
#ifdef VL_Q8_X86
        if (path == VL_Q8_VNNI) {
            groups_vnni(xq, bias, xd, wp, wd, y, B, K, N, g0, g1);
            continue;
        }
        if (path == VL_Q8_AVX2) {
            groups_avx2(xq, xd, wp, wd, y, B, K, N, g0, g1);
            continue;
        }
#endif
        groups_portable(xq, xd, wp, wd, y, B, K, N, g0, g1);
    }
    free(bias);
    return path;
}
