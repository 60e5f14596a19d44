/* See matmul_q8.h. Four paths with one arithmetic on the packed layout: portable C (plain loops,
 * built twice by target_clones like matmul.c) and AVX2 (ggml's maddubs/madd sign trick, 8 rows a
 * vector) on signed bytes; AVX-512 VNNI (vpdpbusd on zmm, 16 rows a vector) and AVX-VNNI (the same
 * on ymm, 8 rows) on unsigned bytes w + 128, the operand vpdpbusd takes unsigned. */
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
 * x, xd, y: the first input's. wp, wd: the group's (K / 32, 512) signed bytes and (K / 32, 16) scales. */
static inline __attribute__((always_inline)) void tile_portable(const int8_t *x, const float *xd,
                                                               const uint8_t *wp, const float *wd, float *y,
                                                               int64_t K, int64_t N, int rows, int cols) {
    int64_t nb = K / QK;
    float acc[MAX_COLS][GROUP] = {{0}};
    for (int64_t j = 0; j < nb; j++) {
        const int8_t *wb = (const int8_t *)wp + j * GROUP_BLOCK;
        for (int c = 0; c < cols; c++) {
            const int8_t *xb = x + c * K + j * QK;
            int32_t s[GROUP] = {0};
            for (int q = 0; q < 8; q++)
                for (int r = 0; r < GROUP; r++)
                    for (int i = 0; i < 4; i++)
                        s[r] += (int32_t)wb[64 * q + 4 * r + i] * (int32_t)xb[4 * q + i];
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
 * tile's extra ones before xd (the VNNI tiles' bias, with a trailing comma). */
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

/* AVX-VNNI (target "avxvnni", _mm256_dpbusd_avx_epi32) came with GCC 11: older ones build without it. */
#if __GNUC__ >= 11
#define VL_Q8_AVXVNNI_BUILT 1
#endif

#define T_AVX2 __attribute__((target("avx2,fma"), always_inline))
#define T_AVXVNNI __attribute__((target("avx2,fma,avxvnni"), always_inline))
#define T_VNNI __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni"), always_inline))

/* The x86 tiles, one macro for every vector width and dot product. NAME(..., p0, parts, rows,
 * cols): rows [V p0, V (p0 + parts)) of a group, V = BITS / 32 rows a vector (a "part": 8 rows of
 * a ymm, 16 of a zmm), `cols` inputs. Per block j and part: s = S0 (an expression of c and j),
 * then per 4-byte step q the part's weight vector w once (PREP: what DOT needs of it) and per
 * input s = DOT (of s[p][c], w and xv = x[4q..4q+3] broadcast): the rows' exact int32 block sums;
 * then acc = fma(wd * xd, (float)s, acc). So every tile is the portable path's arithmetic. */
#define PARTS_TILE(NAME, ATTR, BITS, S0, PREP, DOT)                                                  \
static inline ATTR void NAME(const int8_t *x, const int32_t *bias, const float *xd, const uint8_t *wp, \
                             const float *wd, float *y, int64_t K, int64_t N, int p0, int parts,     \
                             int rows, int cols) {                                                   \
    enum { V = (BITS) / 32 };                                                                        \
    int64_t nb = K / QK;                                                                             \
    __m##BITS acc[GROUP / V][MAX_COLS];                                                              \
    for (int p = 0; p < parts; p++)                                                                  \
        for (int c = 0; c < cols; c++)                                                               \
            acc[p][c] = _mm##BITS##_setzero_ps();                                                    \
    for (int64_t j = 0; j < nb; j++) {                                                               \
        const uint8_t *wb = wp + j * GROUP_BLOCK;                                                    \
        for (int line = 0; p0 == 0 && line < GROUP_BLOCK; line += 64)                                \
            __builtin_prefetch(wb + (cols >= PF_FAR_COLS ? PF_FAR : PF_NEAR) + line, 0, 2);         \
        __m##BITS##i s[GROUP / V][MAX_COLS];                                                         \
        for (int p = 0; p < parts; p++)                                                              \
            for (int c = 0; c < cols; c++)                                                           \
                s[p][c] = S0;                                                                        \
        for (int q = 0; q < 8; q++)     /* the parts inside: each x word used while in a register */ \
            for (int p = 0; p < parts; p++) {                                                        \
                __m##BITS##i w = _mm##BITS##_loadu_si##BITS((const void *)(wb + 64 * q + 4 * V * (p0 + p))); \
                PREP;                                                                                \
                for (int c = 0; c < cols; c++) {   /* the inputs' chains interleaved: DOT's latency */ \
                    __m##BITS##i xv = _mm##BITS##_set1_epi32(x_word(x + c * K + j * QK, q));         \
                    s[p][c] = DOT;                                                                   \
                }                                                                                    \
            }                                                                                        \
        for (int p = 0; p < parts; p++) {                                                            \
            __m##BITS d = _mm##BITS##_loadu_ps(wd + j * GROUP + V * (p0 + p));                       \
            for (int c = 0; c < cols; c++)                                                           \
                acc[p][c] = _mm##BITS##_fmadd_ps(_mm##BITS##_mul_ps(d, _mm##BITS##_set1_ps(xd[c * nb + j])), \
                                                 _mm##BITS##_cvtepi32_ps(s[p][c]), acc[p][c]);       \
        }                                                                                            \
    }                                                                                                \
    for (int p = 0; p < parts; p++)     /* the part's rows that exist: all but in the last group */ \
        for (int c = 0; c < cols; c++) {                                                             \
            int first = V * (p0 + p), valid = rows - first < V ? rows - first : V;                   \
            float out[V];                                                                            \
            _mm##BITS##_storeu_ps(valid == V ? y + c * N + first : out, acc[p][c]);                  \
            if (valid < V)                                                                           \
                memcpy(y + c * N + first, out, (size_t)valid * sizeof *out);                         \
        }                                                                                            \
}

/* AVX2 on signed weights: ggml's sign trick, maddubs(|w|, x with w's sign) to int16 pairs (at
 * most 2 * 128 * 127: no saturation; x is never -128), madd to the row's int32 lane. */
PARTS_TILE(parts_avx2, T_AVX2, 256, _mm256_setzero_si256(),
           const __m256i ones = _mm256_set1_epi16(1); const __m256i aw = _mm256_abs_epi8(w),
           _mm256_add_epi32(s[p][c],
                            _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, w)), ones)))

/* VNNI on unsigned weights (w + 128): s starts at bias = -128 * sum(x's block), which undoes the
 * offset, and vpdpbusd adds the 4 products of each row's lane. AVX-512 VNNI: a zmm, the whole group
 * at once; AVX-VNNI (VEX, Alder Lake and later, Zen 5): a ymm, half a group. */
PARTS_TILE(parts_vnni, T_VNNI, 512, _mm512_set1_epi32(bias[c * nb + j]), (void)0,
           _mm512_dpbusd_epi32(s[p][c], w, xv))
#ifdef VL_Q8_AVXVNNI_BUILT
PARTS_TILE(parts_avxvnni, T_AVXVNNI, 256, _mm256_set1_epi32(bias[c * nb + j]), (void)0,
           _mm256_dpbusd_avx_epi32(s[p][c], w, xv))
#endif

/* A ymm tile over a group's two halves: for 1-2 inputs both in one pass over the blocks (the
 * weights stream from memory once, at the rate of the work); more: a pass per half (16
 * accumulators would not fit 16 registers). */
#define HALVES(PARTS, x, bias, xd, wp, wd, y, K, N, rows, cols)                                      \
    do {                                                                                             \
        if ((cols) <= 2) {                                                                           \
            PARTS(x, bias, xd, wp, wd, y, K, N, 0, (rows) > 8 ? 2 : 1, rows, cols);                  \
            break;                                                                                   \
        }                                                                                            \
        PARTS(x, bias, xd, wp, wd, y, K, N, 0, 1, rows, cols);                                       \
        if ((rows) > 8)                                                                              \
            PARTS(x, bias, xd, wp, wd, y, K, N, 1, 1, rows, cols);                                   \
    } while (0)

static inline T_AVX2 void tile_avx2(const int8_t *x, const float *xd, const uint8_t *wp, const float *wd,
                                    float *y, int64_t K, int64_t N, int rows, int cols) {
    HALVES(parts_avx2, x, NULL, xd, wp, wd, y, K, N, rows, cols);
}

#ifdef VL_Q8_AVXVNNI_BUILT
static inline T_AVXVNNI void tile_avxvnni(const int8_t *x, const int32_t *bias, const float *xd,
                                          const uint8_t *wp, const float *wd, float *y, int64_t K, int64_t N,
                                          int rows, int cols) {
    HALVES(parts_avxvnni, x, bias, xd, wp, wd, y, K, N, rows, cols);
}
#endif

static inline T_VNNI void tile_vnni(const int8_t *x, const int32_t *bias, const float *xd, const uint8_t *wp,
                                    const float *wd, float *y, int64_t K, int64_t N, int rows, int cols) {
    parts_vnni(x, bias, xd, wp, wd, y, K, N, 0, 1, rows, cols);
}

__attribute__((target("avx2,fma")))
static void groups_avx2(const int8_t *xq, const float *xd, const uint8_t *wp, const float *wd, float *y,
                        int64_t B, int64_t K, int64_t N, int64_t g0, int64_t g1) {
    GROUPS_BODY(tile_avx2, 4)
}

#ifdef VL_Q8_AVXVNNI_BUILT
__attribute__((target("avx2,fma,avxvnni")))
static void groups_avxvnni(const int8_t *xq, const int32_t *bias, const float *xd, const uint8_t *wp,
                           const float *wd, float *y, int64_t B, int64_t K, int64_t N, int64_t g0,
                           int64_t g1) {
    GROUPS_BODY(tile_avxvnni, 4, bias + b * nb,)
}
#endif

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
#ifdef VL_Q8_AVXVNNI_BUILT
        if (__builtin_cpu_supports("avxvnni"))
            paths |= 1 << VL_Q8_AVXVNNI;
#endif
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
            && __builtin_cpu_supports("avx512vnni"))
            paths |= 1 << VL_Q8_VNNI;
    }
#endif
    known = paths;
    return known;
}

static int path_format(int path) {
    return path == VL_Q8_VNNI || path == VL_Q8_AVXVNNI ? VL_Q8_UNSIGNED : VL_Q8_SIGNED;
}

/* The fastest available path that reads `format` (-1: none; any format: format < 0). */
static int best_path(int paths, int format) {
    static const int fastest_first[] = {VL_Q8_VNNI, VL_Q8_AVXVNNI, VL_Q8_AVX2, VL_Q8_PORTABLE};
    for (size_t i = 0; i < sizeof fastest_first / sizeof fastest_first[0]; i++) {
        int path = fastest_first[i];
        if ((paths & (1 << path)) && (format < 0 || path_format(path) == format))
            return path;
    }
    return -1;
}

/* The path that runs for (path, format): VL_Q8_BEST resolved; -1 when not available here or
 * when it reads the other format. */
static int resolve_path(int path, int format) {
    int paths = vl_q8_0_paths();
    if (path == VL_Q8_BEST)
        return best_path(paths, format);
    if (path < VL_Q8_PORTABLE || path > VL_Q8_AVXVNNI || !(paths & (1 << path)))
        return -1;
    return format < 0 || path_format(path) == format ? path : -1;
}

int vl_q8_0_format(int path) {
    path = resolve_path(path, -1);
    return path < 0 ? -1 : path_format(path);
}

/* bias[c, j] = -128 * sum(x[c, block j]): the VNNI tiles' start, which undoes their w + 128. */
static void block_bias(const int8_t *xq, int32_t *bias, int64_t num_blocks) {
    for (int64_t j = 0; j < num_blocks; j++) {
        int32_t sum = 0;
        for (int i = 0; i < QK; i++)
            sum += xq[j * QK + i];
        bias[j] = -128 * sum;
    }
}

int vl_matmul_q8_0(const int8_t *xq, const float *xd, const void *weights, const float *wd, float *y,
                   int64_t B, int64_t K, int64_t N, int num_threads, int path, int format) {
    const uint8_t *wp = weights;
    if (format != VL_Q8_SIGNED && format != VL_Q8_UNSIGNED)
        return -1;
    path = resolve_path(path, format);
    if (path < 0)
        return -1;
    int32_t *bias = NULL;
    if (format == VL_Q8_UNSIGNED) {
        bias = malloc((size_t)(B * (K / QK)) * sizeof *bias + 1);
        if (!bias)
            return -2;
        block_bias(xq, bias, B * (K / QK));
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
#ifdef VL_Q8_AVXVNNI_BUILT
        if (path == VL_Q8_AVXVNNI) {
            groups_avxvnni(xq, bias, xd, wp, wd, y, B, K, N, g0, g1);
            continue;
        }
#endif
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
