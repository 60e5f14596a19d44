/* See matmul_q4k.h. Two paths with one arithmetic: portable C (GCC vector extensions, built
 * twice by target_clones like matmul.c; each tile unpacks a super-block's nibbles once for all
 * its inputs) and AVX2 (ggml's maddubs on the nibbles, madd with the scales). */
#include "matmul_q4k.h"

#include "qdot.h"
#include "tasks.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define QK_K 256            /* values per super-block */
#define SUB 32              /* values per sub-block (one scale and min each) */
#define MAX_ROWS 2
#define MAX_COLS 4
#define ROWS_PER_TASK 64
#define PF_AHEAD 16         /* the AVX2 tile prefetches the weight rows this far ahead */

typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

/* The 256 values (0..15) of one super-block in x's order: sub-block 2j from the low nibbles of
 * bytes 32j..32j+31, 2j + 1 from their high nibbles. */
static inline __attribute__((always_inline)) void unpack_nibbles(const uint8_t *qs, int8_t *w) {
    for (int j = 0; j < QK_K / 64; j++)
        for (int i = 0; i < SUB; i++) {
            w[64 * j + i] = (int8_t)(qs[32 * j + i] & 0x0F);
            w[64 * j + SUB + i] = (int8_t)(qs[32 * j + i] >> 4);
        }
}

/* ggml's scale lanes: lane l = sum over sub-blocks s of sc[s] * dot(values 32s + 4l .. + 3). */
static inline __attribute__((always_inline)) v8i scaled_lanes(const int8_t *w, const int8_t *x, const uint8_t *sc) {
    v8i sumi = {0};
    for (int s = 0; s < QK_K / SUB; s++)
        sumi += (int32_t)sc[s] * lanes_portable(w + s * SUB, x + s * SUB);
    return sumi;
}

/* ggml's mins term: _mm_hadd_epi16 of the 16 bsums (pairs), madd with the 8 mins (pairs). */
static inline __attribute__((always_inline)) v4i min_lanes(const int16_t *bs, const uint8_t *mn) {
    v4i prod;
    for (int m = 0; m < 4; m++)
        prod[m] = (int32_t)mn[2 * m] * (int16_t)(bs[4 * m] + bs[4 * m + 1])
                + (int32_t)mn[2 * m + 1] * (int16_t)(bs[4 * m + 2] + bs[4 * m + 3]);
    return prod;
}

/* `rows` weight rows from n x `cols` inputs from b (constants at each call site). */
static inline __attribute__((always_inline)) void tile_portable(
        const int8_t *xq, const float *xd, const int16_t *xbs, const uint8_t *qs, const uint8_t *sc,
        const uint8_t *mn, const float *wd, const float *wdmin, float *y, int64_t K, int64_t N,
        int64_t n, int64_t b, int rows, int cols) {
    int64_t nbk = K / QK_K;
    v8f acc[MAX_ROWS][MAX_COLS] = {{{0}}};
    v4f acc_m[MAX_ROWS][MAX_COLS] = {{{0}}};
    int8_t w[MAX_ROWS][QK_K];
    for (int64_t i = 0; i < nbk; i++) {
        for (int r = 0; r < rows; r++)
            unpack_nibbles(qs + (n + r) * (K / 2) + i * (QK_K / 2), w[r]);
        for (int r = 0; r < rows; r++) {
            int64_t row_block = (n + r) * nbk + i, sub = row_block * (QK_K / SUB);
            for (int c = 0; c < cols; c++) {
                int64_t col_block = (b + c) * nbk + i;
                float d = xd[col_block] * wd[row_block];
                float dmin = -xd[col_block] * wdmin[row_block];
                v8f q = __builtin_convertvector(scaled_lanes(w[r], xq + col_block * QK_K, sc + sub), v8f);
                v4f m = __builtin_convertvector(min_lanes(xbs + col_block * (QK_K / 16), mn + sub), v4f);
                for (int l = 0; l < 8; l++)     /* one rounding per lane in every build */
                    acc[r][c][l] = __builtin_fmaf(d, q[l], acc[r][c][l]);
                for (int l = 0; l < 4; l++)
                    acc_m[r][c][l] = __builtin_fmaf(dmin, m[l], acc_m[r][c][l]);
            }
        }
    }
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            v4f a = acc_m[r][c];
            y[(b + c) * N + n + r] = hsum_ggml(acc[r][c]) + ((a[0] + a[2]) + (a[1] + a[3]));
        }
}

/* Rows [n0, n1) against all B inputs: tiles of 2 rows x 4 inputs, leftover inputs one at a
 * time, a leftover row alone: every (row, input) pair gets the same arithmetic. */
VL_CLONES
static void rows_portable(const int8_t *xq, const float *xd, const int16_t *xbs, const uint8_t *qs,
                          const uint8_t *sc, const uint8_t *mn, const float *wd, const float *wdmin,
                          float *y, int64_t B, int64_t K, int64_t N, int64_t n0, int64_t n1) {
#define TILE(R, C) tile_portable(xq, xd, xbs, qs, sc, mn, wd, wdmin, y, K, N, n, b, (R), (C))
    int64_t n = n0;
    for (; n + MAX_ROWS <= n1; n += MAX_ROWS) {
        int64_t b = 0;
        for (; b + MAX_COLS <= B; b += MAX_COLS)
            TILE(MAX_ROWS, MAX_COLS);
        for (; b < B; b++)
            TILE(MAX_ROWS, 1);
    }
    for (; n < n1; n++)
        for (int64_t b = 0; b < B; b++)
            TILE(1, 1);
#undef TILE
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VL_Q4K_X86 1
#include <immintrin.h>

#define T_AVX2 __attribute__((target("avx2,fma"), always_inline))
#define AVX2_ROWS 2
#define AVX2_COLS 4

/* `rows` weight rows from n x `cols` inputs from b, ggml's AVX2 steps: per super-block and 64
 * values, the low and high nibbles times x by maddubs (int16 pairs, at most 2 * 15 * 127), madd
 * with the sub-block's scale (int32 lanes); the mins by madd of 8 mins with the bsums' pair sums.
 * pf: the weight rows PF_AHEAD further on, prefetched by the first tile of a row block. */
static inline T_AVX2 void tile_avx2(const int8_t *xq, const float *xd, const int16_t *xbs, const uint8_t *qs,
                                    const uint8_t *sc, const uint8_t *mn, const float *wd, const float *wdmin,
                                    float *y, int64_t K, int64_t N, int64_t n, int64_t b, int rows, int cols,
                                    const uint8_t *pf) {
    int64_t nbk = K / QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[AVX2_ROWS][AVX2_COLS];
    __m128 acc_m[AVX2_ROWS][AVX2_COLS];
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            acc[r][c] = _mm256_setzero_ps();
            acc_m[r][c] = _mm_setzero_ps();
        }
    for (int64_t i = 0; i < nbk; i++) {
        if (pf)
            for (int r = 0; r < rows; r++) {
                __builtin_prefetch(pf + r * (K / 2) + i * (QK_K / 2), 0, 2);
                __builtin_prefetch(pf + r * (K / 2) + i * (QK_K / 2) + 64, 0, 2);
            }
        __m256i sumi[AVX2_ROWS][AVX2_COLS];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                sumi[r][c] = _mm256_setzero_si256();
        for (int j = 0; j < QK_K / 64; j++) {
            __m256i low[AVX2_ROWS], high[AVX2_ROWS];
            for (int r = 0; r < rows; r++) {
                __m256i bits = _mm256_loadu_si256((const __m256i *)(qs + (n + r) * (K / 2) + i * (QK_K / 2) + 32 * j));
                low[r] = _mm256_and_si256(bits, m4);
                high[r] = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            }
            for (int c = 0; c < cols; c++) {
                const int8_t *x = xq + ((b + c) * nbk + i) * QK_K + 64 * j;
                __m256i xl = _mm256_loadu_si256((const __m256i *)x), xh = _mm256_loadu_si256((const __m256i *)(x + 32));
                for (int r = 0; r < rows; r++) {
                    const uint8_t *s = sc + ((n + r) * nbk + i) * (QK_K / SUB) + 2 * j;
                    __m256i pl = _mm256_madd_epi16(_mm256_set1_epi16(s[0]), _mm256_maddubs_epi16(low[r], xl));
                    __m256i ph = _mm256_madd_epi16(_mm256_set1_epi16(s[1]), _mm256_maddubs_epi16(high[r], xh));
                    sumi[r][c] = _mm256_add_epi32(sumi[r][c], _mm256_add_epi32(pl, ph));
                }
            }
        }
        for (int r = 0; r < rows; r++) {
            int64_t row_block = (n + r) * nbk + i;
            __m128i mins = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(mn + row_block * (QK_K / SUB))));
            for (int c = 0; c < cols; c++) {
                int64_t col_block = (b + c) * nbk + i;
                const int16_t *bs = xbs + col_block * (QK_K / 16);
                __m128i pairs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)bs),
                                               _mm_loadu_si128((const __m128i *)(bs + 8)));
                __m128 prod = _mm_cvtepi32_ps(_mm_madd_epi16(mins, pairs));
                acc_m[r][c] = _mm_fmadd_ps(_mm_set1_ps(-xd[col_block] * wdmin[row_block]), prod, acc_m[r][c]);
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(xd[col_block] * wd[row_block]),
                                            _mm256_cvtepi32_ps(sumi[r][c]), acc[r][c]);
            }
        }
    }
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            v4f a = (v4f)acc_m[r][c];
            y[(b + c) * N + n + r] = hsum_ggml((v8f)acc[r][c]) + ((a[0] + a[2]) + (a[1] + a[3]));
        }
}

/* Rows [n0, n1) against all B inputs in tiles of 2 rows x 4 inputs, as rows_portable. */
__attribute__((target("avx2,fma")))
static void rows_avx2(const int8_t *xq, const float *xd, const int16_t *xbs, const uint8_t *qs,
                      const uint8_t *sc, const uint8_t *mn, const float *wd, const float *wdmin,
                      float *y, int64_t B, int64_t K, int64_t N, int64_t n0, int64_t n1) {
#define TILE(R, C) tile_avx2(xq, xd, xbs, qs, sc, mn, wd, wdmin, y, K, N, n, b, (R), (C), pf)
    int64_t n = n0;
    for (; n + AVX2_ROWS <= n1; n += AVX2_ROWS) {
        const uint8_t *pf = n + PF_AHEAD + AVX2_ROWS <= N ? qs + (n + PF_AHEAD) * (K / 2) : NULL;
        int64_t b = 0;
        for (; b + AVX2_COLS <= B; b += AVX2_COLS, pf = NULL)
            TILE(AVX2_ROWS, AVX2_COLS);
        for (; b < B; b++, pf = NULL)
            TILE(AVX2_ROWS, 1);
    }
    for (; n < n1; n++) {
        const uint8_t *pf = NULL;
        for (int64_t b = 0; b < B; b++)
            TILE(1, 1);
    }
#undef TILE
}
#endif

int vl_matmul_q4_k(const int8_t *xq, const float *xd, const int16_t *xbsums, const uint8_t *qs,
                   const uint8_t *sc, const uint8_t *mn, const float *wd, const float *wdmin, float *y,
                   int64_t B, int64_t K, int64_t N, int num_threads, int path) {
    path = k_quant_path(path);
    if (path < 0)
        return -1;
    int64_t num_tasks = row_tasks(N, ROWS_PER_TASK, &num_threads);
#pragma omp parallel for schedule(static) num_threads(num_threads) if (num_threads > 1)
    for (int64_t task = 0; task < num_tasks; task++) {
        int64_t n0 = task * ROWS_PER_TASK, n1 = task_end(n0, ROWS_PER_TASK, N);
#ifdef VL_Q4K_X86
        if (path == VL_Q8_AVX2) {
            rows_avx2(xq, xd, xbsums, qs, sc, mn, wd, wdmin, y, B, K, N, n0, n1);
            continue;
        }
#endif
        rows_portable(xq, xd, xbsums, qs, sc, mn, wd, wdmin, y, B, K, N, n0, n1);
    }
    return path;
}

/* ggml's nearest_int: round half to even through the float's mantissa (|v| < 2^22). */
static inline __attribute__((always_inline)) int32_t nearest_int(float v) {
    float shifted = v + 12582912.0f;
    int32_t bits;
    memcpy(&bits, &shifted, sizeof bits);
    return (bits & 0x007fffff) - 0x00400000;
}

/* One block: the signed value of largest magnitude (the first), iscale = -127 / it, q =
 * min(127, nearest_int(iscale * x)), d = 1 / iscale; all-zero: d = 0, q = 0. The product is
 * rounded before the addition in nearest_int: fp-contract=off on the caller, which inlines this. */
static inline __attribute__((always_inline)) void quantize_block_k(const float *x, int8_t *q, float *d,
                                                                  int16_t *bsums) {
    float amax = 0.0f, peak = 0.0f;
    for (int j = 0; j < QK_K; j++) {
        float magnitude = __builtin_fabsf(x[j]);
        if (magnitude > amax) {
            amax = magnitude;
            peak = x[j];
        }
    }
    if (amax == 0.0f) {
        memset(q, 0, QK_K);
        memset(bsums, 0, QK_K / 16 * sizeof *bsums);
        *d = 0.0f;
        return;
    }
    float iscale = -127.0f / peak;
    for (int j = 0; j < QK_K; j++) {
        int32_t v = nearest_int(iscale * x[j]);
        q[j] = (int8_t)(v < 127 ? v : 127);
    }
    for (int j = 0; j < QK_K / 16; j++) {
        int32_t sum = 0;
        for (int i = 0; i < 16; i++)
            sum += q[16 * j + i];
        bsums[j] = (int16_t)sum;
    }
    *d = 1.0f / iscale;
}

VL_CLONES __attribute__((optimize("fp-contract=off")))
void vl_quantize_q8_k(const float *x, int8_t *q, float *d, int16_t *bsums, int64_t num_blocks) {
    for (int64_t j = 0; j < num_blocks; j++)
        quantize_block_k(x + j * QK_K, q + j * QK_K, d + j, bsums + j * (QK_K / 16));
}
