/* See matmul_q8.h. Three paths with one arithmetic: portable C (GCC vector extensions, built
 * twice by target_clones like matmul.c), AVX2 (ggml's maddubs/madd on sign-adjusted bytes) and
 * AVX-512 VNNI (vpdpbusd on 256-bit vectors, as ggml does with AVX512VNNI + VL). */
#include "matmul_q8.h"

#include <stdlib.h>

#include "qdot.h"
#include "tasks.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define QK 32               /* values per Q8_0 block */
#define MAX_ROWS 4
#define MAX_COLS 4
#define ROWS_PER_TASK 64    /* a task's weights: 64 rows (72 KiB at K = 1024) */
#define PF_AHEAD 16         /* the x86 tiles prefetch the weight rows this far ahead */

/* `rows` weight rows x `cols` inputs (constants at each call site); x, xd: the first input's. */
static inline __attribute__((always_inline)) void tile_portable(const int8_t *x, const float *xd,
                                                               const int8_t *w, const float *wd, float *y,
                                                               int64_t K, int64_t N, int rows, int cols,
                                                               const int8_t *pf) {
    (void)pf;                               /* no prefetch in the portable path */
    int64_t nb = K / QK;
    v8f acc[MAX_ROWS][MAX_COLS] = {{{0}}};
    for (int64_t j = 0; j < nb; j++)
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) {
                v8f q = __builtin_convertvector(lanes_portable(w + r * K + j * QK, x + c * K + j * QK), v8f);
                float d = wd[r * nb + j] * xd[c * nb + j];
                for (int l = 0; l < 8; l++)     /* one rounding per lane in every build */
                    acc[r][c][l] = __builtin_fmaf(d, q[l], acc[r][c][l]);
            }
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            y[c * N + r] = hsum_ggml(acc[r][c]);
}

/* Rows [n0, n1) against all B inputs, in tiles of R rows x C inputs, leftover inputs one at a
 * time with R rows, leftover rows one by one: every (row, input) pair gets the same arithmetic.
 * The first tile of each row block also prefetches the rows PF_AHEAD further on (pf). */
#define ROWS_BODY(TILE, X, R, C)                                                                    \
    int64_t nb = K / QK, n = n0;                                                                    \
    for (; n + (R) <= n1; n += (R)) {                                                               \
        const int8_t *pf = n + PF_AHEAD + (R) <= N ? wq + (n + PF_AHEAD) * K : NULL;               \
        int64_t b = 0;                                                                              \
        for (; b + (C) <= B; b += (C), pf = NULL)                                                   \
            TILE((X) + b * K, xd + b * nb, wq + n * K, wd + n * nb, y + b * N + n, K, N, (R), (C), pf); \
        for (; b < B; b++, pf = NULL)                                                               \
            TILE((X) + b * K, xd + b * nb, wq + n * K, wd + n * nb, y + b * N + n, K, N, (R), 1, pf); \
    }                                                                                               \
    for (; n < n1; n++)                                                                             \
        for (int64_t b = 0; b < B; b++)                                                             \
            TILE((X) + b * K, xd + b * nb, wq + n * K, wd + n * nb, y + b * N + n, K, N, 1, 1, NULL);

VL_CLONES
static void rows_portable(const int8_t *xq, const float *xd, const int8_t *wq, const float *wd, float *y,
                          int64_t B, int64_t K, int64_t N, int64_t n0, int64_t n1) {
    ROWS_BODY(tile_portable, xq, 2, 4)
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VL_Q8_X86 1
#include <immintrin.h>

#define T_AVX2 __attribute__((target("avx2,fma"), always_inline))
#define T_VNNI __attribute__((target("avx2,fma,avx512f,avx512vl,avx512vnni"), always_inline))

static inline T_AVX2 void finish_avx2(__m256 acc[MAX_ROWS][MAX_COLS], float *y, int64_t N, int rows, int cols) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            y[c * N + r] = hsum_ggml((v8f)acc[r][c]);
}

/* ds[r][c][i] = wd[r, j + i] * xd[c, j + i] for the tile's next `count` (<= 8) blocks from j: the
 * products of each block's two scales, 8 at a time, so that the block loop loads its d from L1
 * (a broadcast on a load port) instead of multiplying on the float ports it is bound by. */
static inline T_AVX2 void block_scales(float ds[MAX_ROWS][MAX_COLS][8], const float *wd, const float *xd,
                                       int64_t nb, int64_t j, int count, int rows, int cols) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            if (count == 8) {
                store8(ds[r][c], load8(wd + r * nb + j) * load8(xd + c * nb + j));
                continue;
            }
            for (int i = 0; i < count; i++)
                ds[r][c][i] = wd[r * nb + j + i] * xd[c * nb + j + i];
        }
}

/* The cache line of block j (and j + 1) of `rows` weight rows from pf, into L2: memory streams
 * the rows PF_AHEAD ahead while the core computes on these (the hardware prefetcher alone left a
 * decode step at about half the bandwidth the float kernel reaches). */
static inline T_AVX2 void prefetch_rows(const int8_t *pf, int64_t K, int64_t j, int rows) {
    for (int r = 0; r < rows; r++)
        __builtin_prefetch(pf + r * K + j * QK, 0, 2);
}

/* ggml's mul_sum_i8_pairs_float on AVX2: |w| (unsigned) times x with w's sign, pairs to int16
 * (at most 2 * 128 * 127: no saturation), pairs of those to int32 lanes. */
static inline T_AVX2 void tile_avx2(const int8_t *x, const float *xd, const int8_t *w, const float *wd,
                                    float *y, int64_t K, int64_t N, int rows, int cols, const int8_t *pf) {
    int64_t nb = K / QK;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[MAX_ROWS][MAX_COLS];
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            acc[r][c] = _mm256_setzero_ps();
    float ds[MAX_ROWS][MAX_COLS][8];
    for (int64_t j = 0; j < nb; j++) {
        if (j % 8 == 0)
            block_scales(ds, wd, xd, nb, j, nb - j < 8 ? (int)(nb - j) : 8, rows, cols);
        if (pf && j % 2 == 0)
            prefetch_rows(pf, K, j, rows);
        __m256i xv[MAX_COLS];
        for (int c = 0; c < cols; c++)
            xv[c] = _mm256_loadu_si256((const __m256i *)(x + c * K + j * QK));
        for (int r = 0; r < rows; r++) {
            __m256i wv = _mm256_loadu_si256((const __m256i *)(w + r * K + j * QK));
            __m256i aw = _mm256_sign_epi8(wv, wv);
            for (int c = 0; c < cols; c++) {
                __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv[c], wv)), ones);
                __m256 d = _mm256_set1_ps(ds[r][c][j % 8]);
                acc[r][c] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc[r][c]);
            }
        }
    }
    finish_avx2(acc, y, N, rows, cols);
}

/* VNNI: x arrives offset to unsigned (xu = x + 128, vl_matmul_q8_0 makes it), so one vpdpbusd
 * per pair adds dot(xu, w) to -128 * sum(w) (per row and block, shared by the inputs): dot(x, w). */
static inline T_VNNI void tile_vnni(const uint8_t *xu, const float *xd, const int8_t *w, const float *wd,
                                    float *y, int64_t K, int64_t N, int rows, int cols, const int8_t *pf) {
    int64_t nb = K / QK;
    const __m256i offset = _mm256_set1_epi8((char)0x80), zero = _mm256_setzero_si256();
    __m256 acc[MAX_ROWS][MAX_COLS];
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            acc[r][c] = _mm256_setzero_ps();
    float ds[MAX_ROWS][MAX_COLS][8];
    for (int64_t j = 0; j < nb; j++) {
        if (j % 8 == 0)
            block_scales(ds, wd, xd, nb, j, nb - j < 8 ? (int)(nb - j) : 8, rows, cols);
        if (pf && j % 2 == 0)
            prefetch_rows(pf, K, j, rows);
        __m256i xv[MAX_COLS];
        for (int c = 0; c < cols; c++)
            xv[c] = _mm256_loadu_si256((const __m256i *)(xu + c * K + j * QK));
        for (int r = 0; r < rows; r++) {
            __m256i wv = _mm256_loadu_si256((const __m256i *)(w + r * K + j * QK));
            __m256i base = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, offset, wv));
            for (int c = 0; c < cols; c++) {
                __m256i p = _mm256_dpbusd_epi32(base, xv[c], wv);
                __m256 d = _mm256_set1_ps(ds[r][c][j % 8]);
                acc[r][c] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc[r][c]);
            }
        }
    }
    finish_avx2(acc, y, N, rows, cols);
}

__attribute__((target("avx2,fma")))
static void rows_avx2(const int8_t *xq, const float *xd, const int8_t *wq, const float *wd, float *y,
                      int64_t B, int64_t K, int64_t N, int64_t n0, int64_t n1) {
    ROWS_BODY(tile_avx2, xq, 2, 4)
}

__attribute__((target("avx2,fma,avx512f,avx512vl,avx512vnni")))
static void rows_vnni(const uint8_t *xu, const float *xd, const int8_t *wq, const float *wd, float *y,
                      int64_t B, int64_t K, int64_t N, int64_t n0, int64_t n1) {
    ROWS_BODY(tile_vnni, xu, 4, 4)
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

int vl_matmul_q8_0(const int8_t *xq, const float *xd, const int8_t *wq, const float *wd, float *y,
                   int64_t B, int64_t K, int64_t N, int num_threads, int path) {
    int paths = vl_q8_0_paths();
    if (path == VL_Q8_BEST)
        path = best_path(paths);
    if (path < VL_Q8_PORTABLE || path > VL_Q8_VNNI || !(paths & (1 << path)))
        return -1;
    uint8_t *xu = NULL;
    if (path == VL_Q8_VNNI) {
        xu = malloc((size_t)(B * K) + 1);
        if (!xu)
            path = VL_Q8_AVX2;
        else
            for (int64_t i = 0; i < B * K; i++)
                xu[i] = (uint8_t)xq[i] ^ 0x80;      /* x + 128 as an unsigned byte */
    }
    int64_t num_tasks = row_tasks(N, ROWS_PER_TASK, &num_threads);
#pragma omp parallel for schedule(static) num_threads(num_threads) if (num_threads > 1)
    for (int64_t task = 0; task < num_tasks; task++) {
        int64_t n0 = task * ROWS_PER_TASK, n1 = task_end(n0, ROWS_PER_TASK, N);
#ifdef VL_Q8_X86
        if (path == VL_Q8_VNNI) {
            rows_vnni(xu, xd, wq, wd, y, B, K, N, n0, n1);
            continue;
        }
        if (path == VL_Q8_AVX2) {
            rows_avx2(xq, xd, wq, wd, y, B, K, N, n0, n1);
            continue;
        }
#endif
        rows_portable(xq, xd, wq, wd, y, B, K, N, n0, n1);
    }
    free(xu);
    return path;
}
