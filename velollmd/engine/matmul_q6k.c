/* See matmul_q6k.h. Portable C (GCC vector extensions, target_clones) and AVX2 (ggml's maddubs
 * of the unsigned 6-bit values with x, madd with the two scales of each 32 values, the offset
 * term from the bsums). */
#include "matmul_q6k.h"

#include "qdot.h"
#include "tasks.h"

#define QK_K 256
#define CHUNK 32            /* values per maddubs register: two scales of 16 */
#define MAX_ROWS 2
#define MAX_COLS 4
#define ROWS_PER_TASK 64
#define PF_AHEAD 16

/* ggml's offset term: lane l = sc[2l] * bsums[2l] + sc[2l + 1] * bsums[2l + 1] (a madd). */
static inline __attribute__((always_inline)) v8i offset_lanes(const int16_t *bs, const int8_t *s) {
    v8i lanes;
    for (int l = 0; l < 8; l++)
        lanes[l] = (int32_t)s[2 * l] * bs[2 * l] + (int32_t)s[2 * l + 1] * bs[2 * l + 1];
    return lanes;
}

/* `rows` weight rows from n x `cols` inputs from b (constants at each call site). */
static inline __attribute__((always_inline)) void tile_portable(const int8_t *xq, const float *xd,
                                                               const int16_t *xbs, const uint8_t *wq,
                                                               const int8_t *sc, const float *wd, float *y,
                                                               int64_t K, int64_t N, int64_t n, int64_t b,
                                                               int rows, int cols, const uint8_t *pf) {
    (void)pf;
    int64_t nbk = K / QK_K;
    v8f acc[MAX_ROWS][MAX_COLS] = {{{0}}};
    for (int64_t i = 0; i < nbk; i++)
        for (int r = 0; r < rows; r++) {
            const int8_t *w = (const int8_t *)(wq + (n + r) * K + i * QK_K);    /* 0..63 */
            const int8_t *s = sc + ((n + r) * nbk + i) * (QK_K / 16);
            for (int c = 0; c < cols; c++) {
                const int8_t *x = xq + (b + c) * K + i * QK_K;
                v8i sumi = {0};
                for (int k = 0; k < QK_K / CHUNK; k++) {
                    v8i lanes = lanes_portable(w + k * CHUNK, x + k * CHUNK);
                    v8i scale = {s[2 * k], s[2 * k], s[2 * k], s[2 * k],
                                 s[2 * k + 1], s[2 * k + 1], s[2 * k + 1], s[2 * k + 1]};
                    sumi += scale * lanes;
                }
                sumi -= offset_lanes(xbs + ((b + c) * nbk + i) * (QK_K / 16), s) * 32;
                float d = xd[(b + c) * nbk + i] * wd[(n + r) * nbk + i];
                v8f q = __builtin_convertvector(sumi, v8f);
                for (int l = 0; l < 8; l++)
                    acc[r][c][l] = __builtin_fmaf(d, q[l], acc[r][c][l]);
            }
        }
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            y[(b + c) * N + n + r] = hsum_ggml(acc[r][c]);
}

/* Rows [n0, n1) x all B inputs: tiles of R rows x C inputs, leftover inputs one at a time,
 * leftover rows alone; the first tile of a row block prefetches the rows PF_AHEAD on (pf). */
#define ROWS_BODY(TILE, R, C)                                                                      \
    int64_t n = n0;                                                                                \
    for (; n + (R) <= n1; n += (R)) {                                                              \
        const uint8_t *pf = n + PF_AHEAD + (R) <= N ? wq + (n + PF_AHEAD) * K : NULL;             \
        int64_t b = 0;                                                                             \
        for (; b + (C) <= B; b += (C), pf = NULL)                                                  \
            TILE(xq, xd, xbs, wq, sc, wd, y, K, N, n, b, (R), (C), pf);                                 \
        for (; b < B; b++, pf = NULL)                                                              \
            TILE(xq, xd, xbs, wq, sc, wd, y, K, N, n, b, (R), 1, pf);                                   \
    }                                                                                              \
    for (; n < n1; n++)                                                                            \
        for (int64_t b = 0; b < B; b++)                                                            \
            TILE(xq, xd, xbs, wq, sc, wd, y, K, N, n, b, 1, 1, NULL);

VL_CLONES
static void rows_portable(const int8_t *xq, const float *xd, const int16_t *xbs, const uint8_t *wq, const int8_t *sc, const float *wd,
                          float *y, int64_t B, int64_t K, int64_t N, int64_t n0, int64_t n1) {
    ROWS_BODY(tile_portable, MAX_ROWS, MAX_COLS)
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VL_Q6K_X86 1
#include <immintrin.h>

#define T_AVX2 __attribute__((target("avx2,fma"), always_inline))

static inline T_AVX2 void tile_avx2(const int8_t *xq, const float *xd, const int16_t *xbs, const uint8_t *wq,
                                    const int8_t *sc, const float *wd, float *y, int64_t K, int64_t N, int64_t n,
                                    int64_t b, int rows, int cols, const uint8_t *pf) {
    int64_t nbk = K / QK_K;
    __m256 acc[MAX_ROWS][MAX_COLS];
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            acc[r][c] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nbk; i++) {
        __m256i sumi[MAX_ROWS][MAX_COLS];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                sumi[r][c] = _mm256_setzero_si256();
        for (int k = 0; k < QK_K / CHUNK; k++) {
            if (pf && k % 2 == 0)
                for (int r = 0; r < rows; r++)
                    __builtin_prefetch(pf + r * K + i * QK_K + k * CHUNK, 0, 2);
            __m256i wv[MAX_ROWS], scale[MAX_ROWS];
            for (int r = 0; r < rows; r++) {
                const int8_t *s = sc + ((n + r) * nbk + i) * (QK_K / 16) + 2 * k;
                wv[r] = _mm256_loadu_si256((const __m256i *)(wq + (n + r) * K + i * QK_K + k * CHUNK));
                scale[r] = _mm256_set_m128i(_mm_set1_epi16(s[1]), _mm_set1_epi16(s[0]));
            }
            for (int c = 0; c < cols; c++) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + (b + c) * K + i * QK_K + k * CHUNK));
                for (int r = 0; r < rows; r++) {
                    __m256i p16 = _mm256_maddubs_epi16(wv[r], xv);     /* at most 2 * 63 * 128 */
                    sumi[r][c] = _mm256_add_epi32(sumi[r][c], _mm256_madd_epi16(scale[r], p16));
                }
            }
        }
        for (int r = 0; r < rows; r++) {
            __m256i scales = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(sc + ((n + r) * nbk + i) * (QK_K / 16))));
            for (int c = 0; c < cols; c++) {
                __m256i bs = _mm256_loadu_si256((const __m256i *)(xbs + ((b + c) * nbk + i) * (QK_K / 16)));
                __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(bs, scales), 5);
                float d = xd[(b + c) * nbk + i] * wd[(n + r) * nbk + i];
                sumi[r][c] = _mm256_sub_epi32(sumi[r][c], offset);
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[r][c]), acc[r][c]);
            }
        }
    }
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            y[(b + c) * N + n + r] = hsum_ggml((v8f)acc[r][c]);
}

__attribute__((target("avx2,fma")))
static void rows_avx2(const int8_t *xq, const float *xd, const int16_t *xbs, const uint8_t *wq, const int8_t *sc, const float *wd,
                      float *y, int64_t B, int64_t K, int64_t N, int64_t n0, int64_t n1) {
    ROWS_BODY(tile_avx2, MAX_ROWS, MAX_COLS)
}
#endif

/* One call's operands (matmul_q6k.h) and its resolved path. */
typedef struct {
    const int8_t *xq;
    const float *xd;
    const int16_t *xbs;
    const uint8_t *wq;
    const int8_t *sc;
    const float *wd;
    float *y;
    int64_t B, K, N;
    int path;
} q6k_call;

/* Rows [n0, n1) of the call (a run_row_tasks task) on its path. */
static void q6k_rows(const void *args, int64_t n0, int64_t n1) {
    const q6k_call *c = args;
#ifdef VL_Q6K_X86
    if (c->path == VL_Q8_AVX2) {
        rows_avx2(c->xq, c->xd, c->xbs, c->wq, c->sc, c->wd, c->y, c->B, c->K, c->N, n0, n1);
        return;
    }
#endif
    rows_portable(c->xq, c->xd, c->xbs, c->wq, c->sc, c->wd, c->y, c->B, c->K, c->N, n0, n1);
}

int vl_matmul_q6_k(const int8_t *xq, const float *xd, const int16_t *xbsums, const uint8_t *wq, const int8_t *sc,
                   const float *wd, float *y, int64_t B, int64_t K, int64_t N, int num_threads, int path) {
    q6k_call call = {xq, xd, xbsums, wq, sc, wd, y, B, K, N, k_quant_path(path)};
    if (call.path < 0)
        return -1;
    run_row_tasks(q6k_rows, &call, N, ROWS_PER_TASK, num_threads);
    return call.path;
}
