/* Internal to matmul_q4k.c and matmul_q5k.c: the tiles they share, as ggml's AVX2 vec_dot for
 * Q4_K and Q5_K computes them. Both types hold 8 sub-blocks of 32 per super-block of 256, each
 * value d * sc * q - dmin * mn, q's low 4 bits as nibble bytes (32 bytes j: sub-block 2j in the
 * low nibbles, 2j + 1 in the high). Q5_K adds q's 5th bit: 32 bytes qh per super-block, bit s
 * of byte i for value i of sub-block s. Included once per kernel, after defining SM_HIGH_BITS:
 *
 *   0 (Q4_K): qh unused (NULL); the mins go as 4 float lanes, acc_m[m] = fma(dmin, mins lane m,
 *     acc_m[m]), added at the end as (acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]).
 *   1 (Q5_K): the 5th bit added to each value; the 4 mins lanes summed as int32 (exact), then
 *     one float per pair, summs = fma(dmin, that sum, summs), added at the end.
 *
 * Either way y = hsum_float_8(acc) + the mins' total, acc[l] = fma(d, sumi[l], acc[l]) with
 * sumi[l] = sum over sub-blocks s of sc[s] * (lane l of s's 32 byte products). Defines
 * sm_matmul(call, num_threads), the whole product on a path (rows shared out among threads as
 * tasks.h does), which the including file's entry function calls.
 */
#ifndef SM_HIGH_BITS
#error "define SM_HIGH_BITS (0: Q4_K, 1: Q5_K) before including scale_min_tiles.h"
#endif

#include "qdot.h"
#include "tasks.h"

#define QK_K 256            /* values per super-block */
#define SUB 32              /* values per sub-block (one scale and min each) */
#define QH_BYTES 32         /* Q5_K's high-bit bytes per super-block */
#define MAX_ROWS 2
#define MAX_COLS 4
#define PF_AHEAD 16         /* the AVX2 tile prefetches the weight rows this far ahead */
#define ROWS_PER_TASK 64

typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

#if SM_HIGH_BITS
typedef float mins_acc;     /* one float per pair: ggml's summs */
#else
typedef v4f mins_acc;       /* 4 float lanes: ggml's acc_m */
#endif

/* The mins' int lanes (4 of them, each 2 mins times bsum pairs), added into the accumulator. */
static inline __attribute__((always_inline)) mins_acc mins_add(mins_acc acc, float dmin, v4i lanes) {
#if SM_HIGH_BITS
    return __builtin_fmaf(dmin, (float)((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])), acc);
#else
    v4f m = __builtin_convertvector(lanes, v4f);
    for (int l = 0; l < 4; l++)     /* one rounding per lane in every build */
        acc[l] = __builtin_fmaf(dmin, m[l], acc[l]);
    return acc;
#endif
}

static inline __attribute__((always_inline)) float mins_total(mins_acc acc) {
#if SM_HIGH_BITS
    return acc;
#else
    return (acc[0] + acc[2]) + (acc[1] + acc[3]);
#endif
}

/* The 256 values of one super-block in x's order: sub-block 2j from the low nibbles of bytes
 * 32j..32j+31, 2j + 1 from their high nibbles; Q5_K's bit 4 from qh. */
static inline __attribute__((always_inline)) void unpack_values(const uint8_t *qs, const uint8_t *qh, int8_t *w) {
    for (int j = 0; j < QK_K / 64; j++)
        for (int i = 0; i < SUB; i++) {
            int high_0 = SM_HIGH_BITS ? ((qh[i] >> (2 * j)) & 1) << 4 : 0;
            int high_1 = SM_HIGH_BITS ? ((qh[i] >> (2 * j + 1)) & 1) << 4 : 0;
            w[64 * j + i] = (int8_t)((qs[32 * j + i] & 0x0F) | high_0);
            w[64 * j + SUB + i] = (int8_t)((qs[32 * j + i] >> 4) | high_1);
        }
}

/* ggml's scale lanes: lane l = sum over sub-blocks s of sc[s] * dot(values 32s + 4l .. + 3). */
static inline __attribute__((always_inline)) v8i scaled_lanes(const int8_t *w, const int8_t *x, const uint8_t *sc) {
    v8i sumi = {0};
    for (int s = 0; s < QK_K / SUB; s++)
        sumi += (int32_t)sc[s] * lanes_portable(w + s * SUB, x + s * SUB);
    return sumi;
}

/* ggml's mins lanes: _mm_hadd_epi16 of the 16 bsums (pairs), madd with the 8 mins (pairs). */
static inline __attribute__((always_inline)) v4i min_lanes(const int16_t *bs, const uint8_t *mn) {
    v4i prod;
    for (int m = 0; m < 4; m++)
        prod[m] = (int32_t)mn[2 * m] * (int16_t)(bs[4 * m] + bs[4 * m + 1])
                + (int32_t)mn[2 * m + 1] * (int16_t)(bs[4 * m + 2] + bs[4 * m + 3]);
    return prod;
}

/* `rows` weight rows from n x `cols` inputs from b (constants at each call site). */
static inline __attribute__((always_inline)) void tile_portable(
        const int8_t *xq, const float *xd, const int16_t *xbs, const uint8_t *qs, const uint8_t *qh,
        const uint8_t *sc, const uint8_t *mn, const float *wd, const float *wdmin, float *y, int64_t K,
        int64_t N, int64_t n, int64_t b, int rows, int cols) {
    int64_t nbk = K / QK_K;
    v8f acc[MAX_ROWS][MAX_COLS] = {{{0}}};
    mins_acc acc_m[MAX_ROWS][MAX_COLS];
    int8_t w[MAX_ROWS][QK_K];
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            acc_m[r][c] = (mins_acc){0};
    for (int64_t i = 0; i < nbk; i++) {
        for (int r = 0; r < rows; r++)
            unpack_values(qs + (n + r) * (K / 2) + i * (QK_K / 2),
                          SM_HIGH_BITS ? qh + ((n + r) * nbk + i) * QH_BYTES : NULL, w[r]);
        for (int r = 0; r < rows; r++) {
            int64_t row_block = (n + r) * nbk + i, sub = row_block * (QK_K / SUB);
            for (int c = 0; c < cols; c++) {
                int64_t col_block = (b + c) * nbk + i;
                float d = xd[col_block] * wd[row_block];
                float dmin = -xd[col_block] * wdmin[row_block];
                v8f q = __builtin_convertvector(scaled_lanes(w[r], xq + col_block * QK_K, sc + sub), v8f);
                for (int l = 0; l < 8; l++)     /* one rounding per lane in every build */
                    acc[r][c][l] = __builtin_fmaf(d, q[l], acc[r][c][l]);
                acc_m[r][c] = mins_add(acc_m[r][c], dmin, min_lanes(xbs + col_block * (QK_K / 16), mn + sub));
            }
        }
    }
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            y[(b + c) * N + n + r] = hsum_ggml(acc[r][c]) + mins_total(acc_m[r][c]);
}

/* Rows [n0, n1) against all B inputs: tiles of 2 rows x 4 inputs, leftover inputs one at a
 * time, a leftover row alone: every (row, input) pair gets the same arithmetic. */
VL_CLONES
static void rows_portable(const int8_t *xq, const float *xd, const int16_t *xbs, const uint8_t *qs,
                          const uint8_t *qh, const uint8_t *sc, const uint8_t *mn, const float *wd,
                          const float *wdmin, float *y, int64_t B, int64_t K, int64_t N, int64_t n0, int64_t n1) {
#define TILE(R, C) tile_portable(xq, xd, xbs, qs, qh, sc, mn, wd, wdmin, y, K, N, n, b, (R), (C))
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
#define SM_X86 1
#include <immintrin.h>

#define T_AVX2 __attribute__((target("avx2,fma"), always_inline))

/* The 64 values j of one row's super-block as two vectors of bytes (ggml's q4l/q4h, or q5_0 /
 * q5_1 with the bits 2j and 2j + 1 of qh added as 16). */
static inline T_AVX2 void values_avx2(const uint8_t *qs, __m256i hbits, int j, __m256i *low, __m256i *high) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256i bits = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
    *low = _mm256_and_si256(bits, m4);
    *high = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
#if SM_HIGH_BITS
    const __m256i m16 = _mm256_set1_epi8(0x10);
    __m256i h = _mm256_srli_epi16(hbits, 2 * j);        /* bit 2j of each byte at bit 0 */
    *low = _mm256_or_si256(*low, _mm256_and_si256(_mm256_slli_epi16(h, 4), m16));
    *high = _mm256_or_si256(*high, _mm256_and_si256(_mm256_slli_epi16(h, 3), m16));
#else
    (void)hbits;
#endif
}

/* ggml's pair sums of one input's 16 bsums (_mm_hadd_epi16), for every row of a tile. */
static inline T_AVX2 __m128i bsum_pairs_avx2(const int16_t *bs) {
    return _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)bs), _mm_loadu_si128((const __m128i *)(bs + 8)));
}

#if SM_HIGH_BITS
/* Q5_K: one row's mins against `cols` inputs, lane c for input c: the int sum of the 4 lanes of
 * mins madd pairs[c] (exact, as ggml's two _mm_hadd_epi32), then fma(dmins lane c, it, acc lane
 * c): each lane is ggml's scalar summs = fma(dmin, sum, summs), 4 inputs in one instruction. */
static inline T_AVX2 __m128 mins_add_cols_avx2(__m128 acc, __m128 dmins, __m128i mins, const __m128i *pairs,
                                               int cols) {
    __m128i prod[MAX_COLS], zero = _mm_setzero_si128(), totals;
    for (int c = 0; c < MAX_COLS; c++)
        prod[c] = c < cols ? _mm_madd_epi16(mins, pairs[c]) : zero;
    if (cols == 1)          /* one input (decoding alone): 2 hadds, not 3 */
        totals = _mm_hadd_epi32(_mm_hadd_epi32(prod[0], zero), zero);
    else
        totals = _mm_hadd_epi32(_mm_hadd_epi32(prod[0], prod[1]), _mm_hadd_epi32(prod[2], prod[3]));
    return _mm_fmadd_ps(dmins, _mm_cvtepi32_ps(totals), acc);
}
#else
/* Q4_K: the mins' 4 int lanes of one (row, input) pair by ggml's madd, added as mins_add does. */
static inline T_AVX2 mins_acc mins_add_avx2(mins_acc acc, float dmin, __m128i mins, const int16_t *bs) {
    __m128i prod = _mm_madd_epi16(mins, bsum_pairs_avx2(bs));
    return (mins_acc)_mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), (__m128)acc);
}
#endif

/* `rows` weight rows from n x `cols` inputs from b, ggml's AVX2 steps: per super-block and 64
 * values, the two vectors of values times x by maddubs (int16 pairs, at most 2 * 31 * 128),
 * madd with the sub-block's scale (int32 lanes); the mins by madd of 8 mins with the bsums'
 * pair sums. pf, pfh: the weight rows PF_AHEAD further on (qs, qh), prefetched by the first
 * tile of a row block. */
static inline T_AVX2 void tile_avx2(const int8_t *xq, const float *xd, const int16_t *xbs, const uint8_t *qs,
                                    const uint8_t *qh, const uint8_t *sc, const uint8_t *mn, const float *wd,
                                    const float *wdmin, float *y, int64_t K, int64_t N, int64_t n, int64_t b,
                                    int rows, int cols, const uint8_t *pf, const uint8_t *pfh) {
    int64_t nbk = K / QK_K;
    __m256 acc[MAX_ROWS][MAX_COLS];
#if SM_HIGH_BITS
    __m128 summs[MAX_ROWS];                 /* lane c: input b + c's */
    for (int r = 0; r < rows; r++)
        summs[r] = _mm_setzero_ps();
#else
    mins_acc acc_m[MAX_ROWS][MAX_COLS];
#endif
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            acc[r][c] = _mm256_setzero_ps();
#if !SM_HIGH_BITS
            acc_m[r][c] = (mins_acc){0};
#endif
        }
    for (int64_t i = 0; i < nbk; i++) {
        if (pf)
            for (int r = 0; r < rows; r++) {
                __builtin_prefetch(pf + r * (K / 2) + i * (QK_K / 2), 0, 2);
                __builtin_prefetch(pf + r * (K / 2) + i * (QK_K / 2) + 64, 0, 2);
                if (SM_HIGH_BITS)
                    __builtin_prefetch(pfh + (r * nbk + i) * QH_BYTES, 0, 2);
            }
        __m256i hbits[MAX_ROWS], sumi[MAX_ROWS][MAX_COLS];
        for (int r = 0; r < rows; r++) {
            hbits[r] = SM_HIGH_BITS ? _mm256_loadu_si256((const __m256i *)(qh + ((n + r) * nbk + i) * QH_BYTES))
                                    : _mm256_setzero_si256();
            for (int c = 0; c < cols; c++)
                sumi[r][c] = _mm256_setzero_si256();
        }
        for (int j = 0; j < QK_K / 64; j++) {
            __m256i low[MAX_ROWS], high[MAX_ROWS];
            for (int r = 0; r < rows; r++)
                values_avx2(qs + (n + r) * (K / 2) + i * (QK_K / 2), hbits[r], j, &low[r], &high[r]);
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
#if SM_HIGH_BITS
        __m128i pairs[MAX_COLS];
        float neg_xd[MAX_COLS] = {0};       /* -xd per input: ggml's dmin = -xd * wdmin */
        for (int c = 0; c < cols; c++) {
            pairs[c] = bsum_pairs_avx2(xbs + ((b + c) * nbk + i) * (QK_K / 16));
            neg_xd[c] = -xd[(b + c) * nbk + i];
        }
        /* in registers (a vector load of the 4 stores just made would stall their forwarding) */
        __m128 neg_xds = _mm_setr_ps(neg_xd[0], neg_xd[1], neg_xd[2], neg_xd[3]);
#endif
        for (int r = 0; r < rows; r++) {
            int64_t row_block = (n + r) * nbk + i;
            __m128i mins = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(mn + row_block * (QK_K / SUB))));
#if SM_HIGH_BITS
            __m128 dmins = _mm_mul_ps(neg_xds, _mm_set1_ps(wdmin[row_block]));
            summs[r] = mins_add_cols_avx2(summs[r], dmins, mins, pairs, cols);
#endif
            for (int c = 0; c < cols; c++) {
                int64_t col_block = (b + c) * nbk + i;
#if !SM_HIGH_BITS
                acc_m[r][c] = mins_add_avx2(acc_m[r][c], -xd[col_block] * wdmin[row_block], mins,
                                            xbs + col_block * (QK_K / 16));
#endif
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(xd[col_block] * wd[row_block]),
                                            _mm256_cvtepi32_ps(sumi[r][c]), acc[r][c]);
            }
        }
    }
    for (int r = 0; r < rows; r++) {
        float total[MAX_COLS];              /* the mins' total per input */
#if SM_HIGH_BITS
        _mm_storeu_ps(total, summs[r]);
#else
        for (int c = 0; c < cols; c++)
            total[c] = mins_total(acc_m[r][c]);
#endif
        for (int c = 0; c < cols; c++)
            y[(b + c) * N + n + r] = hsum_ggml((v8f)acc[r][c]) + total[c];
    }
}

/* Rows [n0, n1) against all B inputs in tiles of 2 rows x 4 inputs, as rows_portable. */
__attribute__((target("avx2,fma")))
static void rows_avx2(const int8_t *xq, const float *xd, const int16_t *xbs, const uint8_t *qs,
                      const uint8_t *qh, const uint8_t *sc, const uint8_t *mn, const float *wd,
                      const float *wdmin, float *y, int64_t B, int64_t K, int64_t N, int64_t n0, int64_t n1) {
#define TILE(R, C) tile_avx2(xq, xd, xbs, qs, qh, sc, mn, wd, wdmin, y, K, N, n, b, (R), (C), pf, pfh)
    int64_t n = n0, nbk = K / QK_K;
    for (; n + MAX_ROWS <= n1; n += MAX_ROWS) {
        int ahead = n + PF_AHEAD + MAX_ROWS <= N;
        const uint8_t *pf = ahead ? qs + (n + PF_AHEAD) * (K / 2) : NULL;
        const uint8_t *pfh = ahead && SM_HIGH_BITS ? qh + (n + PF_AHEAD) * nbk * QH_BYTES : NULL;
        int64_t b = 0;
        for (; b + MAX_COLS <= B; b += MAX_COLS, pf = NULL)
            TILE(MAX_ROWS, MAX_COLS);
        for (; b < B; b++, pf = NULL)
            TILE(MAX_ROWS, 1);
    }
    for (; n < n1; n++) {
        const uint8_t *pf = NULL, *pfh = NULL;
        for (int64_t b = 0; b < B; b++)
            TILE(1, 1);
    }
#undef TILE
}
#endif

/* One call's operands (matmul_q4k.h, matmul_q5k.h; qh NULL for Q4_K) and its resolved path. */
typedef struct {
    const int8_t *xq;
    const float *xd;
    const int16_t *xbs;
    const uint8_t *qs, *qh, *sc, *mn;
    const float *wd, *wdmin;
    float *y;
    int64_t B, K, N;
    int path;
} sm_call;

/* Rows [n0, n1) of the call (a run_row_tasks task) on its path. */
static void sm_rows(const void *args, int64_t n0, int64_t n1) {
    const sm_call *c = args;
#ifdef SM_X86
    if (c->path == VL_Q8_AVX2) {
        rows_avx2(c->xq, c->xd, c->xbs, c->qs, c->qh, c->sc, c->mn, c->wd, c->wdmin, c->y, c->B, c->K, c->N,
                  n0, n1);
        return;
    }
#endif
    rows_portable(c->xq, c->xd, c->xbs, c->qs, c->qh, c->sc, c->mn, c->wd, c->wdmin, c->y, c->B, c->K, c->N,
                  n0, n1);
}

/* The whole product on call.path (VL_Q8_BEST resolved), rows shared out among threads; returns
 * the path that ran, or -1 (not available here: nothing written). */
static inline int sm_matmul(sm_call call, int num_threads) {
    call.path = k_quant_path(call.path);
    if (call.path < 0)
        return -1;
    run_row_tasks(sm_rows, &call, call.N, ROWS_PER_TASK, num_threads);
    return call.path;
}
