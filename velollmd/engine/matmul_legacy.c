/* See matmul_legacy.h. Three paths with one arithmetic: portable C (GCC vector extensions, built
 * twice by target_clones like matmul.c), AVX2 and AVX-512 VNNI. The weights' integers are
 * u - offset with u unsigned (the nibble, plus 16 * the fifth bit for Q5_*; offset 8 for Q4_0,
 * 16 for Q5_0, 0 for Q4_1 and Q5_1, whose offset is the min term): the x86 paths multiply u by x
 * and add -offset * (x's lane sums), computed once per call for every input and block
 * (offset_lanes). The same exact int32 lanes as ggml's (u - offset) * x, in fewer operations per
 * (row, input) pair (AVX2: maddubs, madd, add; VNNI: one vpdpbusd starting from the offset
 * lanes). */
#include "matmul_legacy.h"

#include <stdlib.h>
#include <string.h>

#include "matmul_q8.h"
#include "qdot.h"
#include "tasks.h"

#define QK 32               /* values per block */
#define QBYTES 16           /* nibble bytes per block */
#define HBYTES 4            /* Q5_*: bytes of fifth bits per block */
#define MAX_ROWS 4
#define MAX_COLS 4
#define ROWS_PER_TASK 64
#define PF_AHEAD 16         /* the x86 tiles prefetch the weight rows this far ahead */
#define AI __attribute__((always_inline))

/* One call's weights (N rows of K values), as matmul_legacy.h describes them. */
typedef struct {
    const uint8_t *qs;
    const uint8_t *qh;      /* Q5_*: fifth bits; NULL for Q4_* */
    const float *wd;
    const float *wm;        /* Q4_1, Q5_1: mins; NULL for Q4_0, Q5_0 */
    int offset;             /* 8 (Q4_0), 16 (Q5_0), 0 (Q4_1, Q5_1) */
} weights_t;

/* One call's inputs (B rows of K values). */
typedef struct {
    const int8_t *xq;
    const float *xd;
    const float *xs;        /* Q8_1 (with wm): each block's F16 d * sum of its values */
    const int32_t *off;     /* x86 paths: (B, K / 32, 8) -offset * x's lane sums (offset_lanes) */
} inputs_t;

/* A type's parts beyond qs and wd, as the bits of a constant `type` that the tiles and row
 * loops take, so that each type compiles to its own loops without tests inside them. */
#define FIVE 1              /* fifth bits qh: Q5_0, Q5_1 */
#define MINS 2              /* mins wm and input sums xs: Q4_1, Q5_1 */

/* Row n's block j: its nibble bytes and (FIVE) its 4 bytes of fifth bits. */
#define QS(n, j) (w->qs + (n) * (K / 2) + (j) * QBYTES)
#define QH(n, j) ((type) & FIVE ? w->qh + ((n) * nb + (j)) * HBYTES : NULL)

/* One block's 32 integers in x's order: the low nibbles, then the high ones, with bit i of qh
 * (Q5_*; NULL for Q4_*) as bit 4 of value i, minus the offset. */
static inline AI void unpack_block(const uint8_t *qs, const uint8_t *qh, int offset, int8_t *v) {
    uint32_t high = 0;
    if (qh)
        memcpy(&high, qh, HBYTES);
    for (int i = 0; i < QBYTES; i++) {
        v[i] = (int8_t)(((qs[i] & 0x0F) | ((high >> i) & 1) << 4) - offset);
        v[QBYTES + i] = (int8_t)(((qs[i] >> 4) | ((high >> (QBYTES + i)) & 1) << 4) - offset);
    }
}

/* ggml's min term of one block (Q4_1, Q5_1): summs += m * s, in block order. */
static inline AI float min_step(float summs, float m, float s) {
    return __builtin_fmaf(m, s, summs);
}

/* y for each pair of the tile: ggml's hsum_float_8 of the lanes, plus the min term if any. */
static inline AI void store_tile(v8f acc[MAX_ROWS][MAX_COLS], float summs[MAX_ROWS][MAX_COLS], float *y,
                                 int64_t N, int64_t n, int64_t b, int rows, int cols, int mins) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            y[(b + c) * N + n + r] = mins ? hsum_ggml(acc[r][c]) + summs[r][c] : hsum_ggml(acc[r][c]);
}

/* `rows` weight rows from n x `cols` inputs from b (constants at each call site). */
static inline AI void tile_portable(const inputs_t *in, const weights_t *w, float *y, int64_t K, int64_t N,
                                    int64_t n, int64_t b, int rows, int cols, int type, const uint8_t *pf) {
    (void)pf;                               /* no prefetch in the portable path */
    int64_t nb = K / QK;
    v8f acc[MAX_ROWS][MAX_COLS] = {{{0}}};
    float summs[MAX_ROWS][MAX_COLS] = {{0}};
    int8_t v[MAX_ROWS][QK];
    for (int64_t j = 0; j < nb; j++) {
        for (int r = 0; r < rows; r++)
            unpack_block(QS(n + r, j), QH(n + r, j), w->offset, v[r]);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) {
                int64_t row_block = (n + r) * nb + j, col_block = (b + c) * nb + j;
                v8f q = __builtin_convertvector(lanes_portable(v[r], in->xq + col_block * QK), v8f);
                float d = w->wd[row_block] * in->xd[col_block];
                for (int l = 0; l < 8; l++)     /* one rounding per lane in every build */
                    acc[r][c][l] = __builtin_fmaf(d, q[l], acc[r][c][l]);
                if (type & MINS)
                    summs[r][c] = min_step(summs[r][c], w->wm[row_block], in->xs[col_block]);
            }
    }
    store_tile(acc, summs, y, N, n, b, rows, cols, type & MINS);
}

/* Rows [n0, n1) against all B inputs, in tiles of R rows x C inputs, leftover inputs one at a
 * time with R rows, leftover rows one by one: every (row, input) pair gets the same arithmetic.
 * The first tile of each row block also prefetches the rows PF_AHEAD further on (pf). */
#define ROWS_BODY(TILE, R, C, TYPE)                                                                 \
    {                                                                                               \
        int64_t n = n0;                                                                             \
        for (; n + (R) <= n1; n += (R)) {                                                           \
            const uint8_t *pf = n + PF_AHEAD + (R) <= N ? w->qs + (n + PF_AHEAD) * (K / 2) : NULL; \
            int64_t b = 0;                                                                          \
            for (; b + (C) <= B; b += (C), pf = NULL)                                               \
                TILE(in, w, y, K, N, n, b, (R), (C), (TYPE), pf);                                   \
            for (; b < B; b++, pf = NULL)                                                           \
                TILE(in, w, y, K, N, n, b, (R), 1, (TYPE), pf);                                     \
        }                                                                                           \
        for (; n < n1; n++)                                                                         \
            for (int64_t b = 0; b < B; b++)                                                         \
                TILE(in, w, y, K, N, n, b, 1, 1, (TYPE), NULL);                                     \
    }

/* ROWS_BODY for w's type, each type with its own constant. */
#define ROWS_OF_TYPE(TILE, R, C)                                                                    \
    switch ((w->qh ? FIVE : 0) | (w->wm ? MINS : 0)) {                                             \
    case 0: ROWS_BODY(TILE, R, C, 0) break;                                                         \
    case FIVE: ROWS_BODY(TILE, R, C, FIVE) break;                                                   \
    case MINS: ROWS_BODY(TILE, R, C, MINS) break;                                                   \
    default: ROWS_BODY(TILE, R, C, FIVE | MINS) break;                                              \
    }

VL_CLONES
static void rows_portable(const inputs_t *in, const weights_t *w, float *y, int64_t B, int64_t K, int64_t N,
                          int64_t n0, int64_t n1) {
    ROWS_OF_TYPE(tile_portable, 2, 4)
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VL_LEGACY_X86 1
#include <immintrin.h>

#define T_AVX2 __attribute__((target("avx2,fma"), always_inline))
#define VNNI_TARGET "avx2,fma,avx512f,avx512vl,avx512bw,avx512vnni"
#define T_VNNI __attribute__((target(VNNI_TARGET), always_inline))

/* A block's 32 nibbles as bytes 0..15 in x's order (ggml's bytes_from_nibbles_32): the 16 bytes
 * in both halves (a broadcast load), the upper half shifted by 4. */
static inline T_AVX2 __m256i nibbles_avx2(const uint8_t *qs) {
    __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    __m256i shifted = _mm256_srlv_epi64(both, _mm256_set_epi64x(4, 4, 0, 0));
    return _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F));
}

/* Bit i of the block's 4 bytes qh as 16 in byte i (ggml's bytes_from_bits_32, masked). */
static inline T_AVX2 __m256i high_bits_avx2(const uint8_t *qh) {
    int32_t bits;
    memcpy(&bits, qh, HBYTES);
    const __m256i spread = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201);
    __m256i bytes = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(bits), spread), bit);
    return _mm256_and_si256(_mm256_cmpeq_epi8(bytes, bit), _mm256_set1_epi8(16));
}

/* A block's 32 unsigned values u in x's order: the nibbles, plus 16 * the fifth bits (Q5_*). */
static inline T_AVX2 __m256i values_avx2(const uint8_t *qs, const uint8_t *qh) {
    __m256i u = nibbles_avx2(qs);
    return qh ? _mm256_or_si256(u, high_bits_avx2(qh)) : u;
}

/* VNNI (AVX-512): the fifth bits as a byte mask, 16 added where set (2 operations, not 5). */
static inline T_VNNI __m256i values_vnni(const uint8_t *qs, const uint8_t *qh) {
    __m256i u = nibbles_avx2(qs);
    if (!qh)
        return u;
    uint32_t bits;
    memcpy(&bits, qh, HBYTES);
    return _mm256_mask_add_epi8(u, _cvtu32_mask32(bits), u, _mm256_set1_epi8(16));
}

/* The lanes of (u - offset) * x: u * x in int16 pairs (at most 2 * 31 * 128), int32 quads, plus
 * the offset lanes (off: 8 int32). */
static inline T_AVX2 __m256i lanes_avx2(__m256i u, __m256i xv, const int32_t *off) {
    __m256i quads = _mm256_madd_epi16(_mm256_maddubs_epi16(u, xv), _mm256_set1_epi16(1));
    return _mm256_add_epi32(quads, _mm256_loadu_si256((const __m256i *)off));
}

/* VNNI: the lanes start from the offset lanes, and one vpdpbusd adds u * x to them. */
static inline T_VNNI __m256i lanes_vnni(__m256i u, __m256i xv, const int32_t *off) {
    return _mm256_dpbusd_epi32(_mm256_loadu_si256((const __m256i *)off), u, xv);
}

/* ds[r][c][i] = wd[n + r, j + i] * xd[b + c, j + i] for the tile's next `count` (<= 8) blocks
 * from j, so that the block loop broadcasts its d from L1 instead of multiplying on the float
 * ports. */
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

/* The x86 tile for one target: per block, each input's x once, each row's values once, then
 * LANES (with the input's offset lanes) and fma(d, lanes, acc) per pair (and the min term);
 * ggml's hsum_float_8 at the end. Every 4 blocks (one cache line of each row's qs) the rows
 * PF_AHEAD further on are prefetched. */
#define X86_TILE(NAME, TARGET, VALUES, LANES)                                                               \
static inline TARGET void NAME(const inputs_t *in, const weights_t *w, float *y, int64_t K, int64_t N,  \
                               int64_t n, int64_t b, int rows, int cols, int type, const uint8_t *pf) { \
    int64_t nb = K / QK;                                                                            \
    v8f acc[MAX_ROWS][MAX_COLS];                                                                    \
    float summs[MAX_ROWS][MAX_COLS] = {{0}};                                                        \
    for (int r = 0; r < rows; r++)                                                                  \
        for (int c = 0; c < cols; c++)                                                              \
            acc[r][c] = (v8f)_mm256_setzero_ps();                                                   \
    float ds[MAX_ROWS][MAX_COLS][8];                                                                \
    for (int64_t j = 0; j < nb; j++) {                                                              \
        if (j % 8 == 0)                                                                             \
            block_scales(ds, w->wd + n * nb, in->xd + b * nb, nb, j, nb - j < 8 ? (int)(nb - j) : 8, \
                         rows, cols);                                                               \
        if (pf && j % 4 == 0)                                                                       \
            for (int r = 0; r < rows; r++)                                                          \
                __builtin_prefetch(pf + r * (K / 2) + j * QBYTES, 0, 2);                           \
        __m256i xv[MAX_COLS];                                                                       \
        for (int c = 0; c < cols; c++)                                                              \
            xv[c] = _mm256_loadu_si256((const __m256i *)(in->xq + (b + c) * K + j * QK));          \
        for (int r = 0; r < rows; r++) {                                                            \
            __m256i u = VALUES(QS(n + r, j), QH(n + r, j));                                        \
            for (int c = 0; c < cols; c++) {                                                        \
                __m256 d = _mm256_set1_ps(ds[r][c][j % 8]);                                         \
                __m256i lanes = LANES(u, xv[c], in->off + ((b + c) * nb + j) * 8);                  \
                acc[r][c] = (v8f)_mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), (__m256)acc[r][c]); \
                if (type & MINS)                                                                    \
                    summs[r][c] = min_step(summs[r][c], w->wm[(n + r) * nb + j], in->xs[(b + c) * nb + j]); \
            }                                                                                       \
        }                                                                                           \
    }                                                                                               \
    store_tile(acc, summs, y, N, n, b, rows, cols, type & MINS);                                    \
}

X86_TILE(tile_avx2, T_AVX2, values_avx2, lanes_avx2)
X86_TILE(tile_vnni, T_VNNI, values_vnni, lanes_vnni)

__attribute__((target("avx2,fma")))
static void rows_avx2(const inputs_t *in, const weights_t *w, float *y, int64_t B, int64_t K, int64_t N,
                      int64_t n0, int64_t n1) {
    ROWS_OF_TYPE(tile_avx2, 2, 4)
}

__attribute__((target(VNNI_TARGET)))
static void rows_vnni(const inputs_t *in, const weights_t *w, float *y, int64_t B, int64_t K, int64_t N,
                      int64_t n0, int64_t n1) {
    ROWS_OF_TYPE(tile_vnni, 4, 4)
}
#endif

/* VL_Q8_BEST resolved to the fastest path here; -1 when the path is not available here (the VNNI
 * path here also takes AVX-512 BW, which every AVX-512 VNNI CPU has). */
static int legacy_path(int path) {
    int paths = vl_q8_0_paths();
#ifdef VL_LEGACY_X86
    if (!__builtin_cpu_supports("avx512bw"))
        paths &= ~(1 << VL_Q8_VNNI);
#endif
    if (path == VL_Q8_BEST)
        for (path = VL_Q8_VNNI; path > VL_Q8_PORTABLE && !(paths & (1 << path)); path--)
            ;
    return path >= VL_Q8_PORTABLE && path <= VL_Q8_VNNI && (paths & (1 << path)) ? path : -1;
}

/* off (B, K / 32, 8): -offset * each input's lane sums per block (lane l: values 4l..4l+3),
 * the part of (u - offset) * x that all rows share (exact int32). */
static void offset_lanes(const int8_t *xq, int64_t B, int64_t K, int offset, int32_t *off) {
    for (int64_t i = 0; i < B * K / 4; i++) {
        const int8_t *x = xq + 4 * i;
        off[i] = -offset * ((int32_t)x[0] + x[1] + x[2] + x[3]);
    }
}

/* One call: its inputs (with the offset lanes on the x86 paths), weights and resolved path. */
typedef struct {
    inputs_t in;
    const weights_t *w;
    float *y;
    int64_t B, K, N;
    int path;
} legacy_call;

/* Rows [n0, n1) of the call (a run_row_tasks task) on its path. */
static void legacy_rows(const void *args, int64_t n0, int64_t n1) {
    const legacy_call *c = args;
#ifdef VL_LEGACY_X86
    if (c->path == VL_Q8_VNNI) {
        rows_vnni(&c->in, c->w, c->y, c->B, c->K, c->N, n0, n1);
        return;
    }
    if (c->path == VL_Q8_AVX2) {
        rows_avx2(&c->in, c->w, c->y, c->B, c->K, c->N, n0, n1);
        return;
    }
#endif
    rows_portable(&c->in, c->w, c->y, c->B, c->K, c->N, n0, n1);
}

/* Every type's product. */
static int matmul_legacy(inputs_t in, const weights_t *w, float *y, int64_t B, int64_t K, int64_t N,
                         int num_threads, int path) {
    legacy_call call = {in, w, y, B, K, N, legacy_path(path)};
    if (call.path < 0)
        return -1;
    int32_t *off = NULL;
    if (call.path != VL_Q8_PORTABLE) {
        off = malloc((size_t)(B * K / 4) * sizeof *off + 1);
        if (!off)
            call.path = VL_Q8_PORTABLE;
        else
            offset_lanes(in.xq, B, K, w->offset, off);
    }
    call.in.off = off;
    run_row_tasks(legacy_rows, &call, N, ROWS_PER_TASK, num_threads);
    free(off);
    return call.path;
}

int vl_matmul_q4_0(const int8_t *xq, const float *xd, const uint8_t *qs, const float *wd, float *y,
                   int64_t B, int64_t K, int64_t N, int num_threads, int path) {
    weights_t w = {qs, NULL, wd, NULL, 8};
    return matmul_legacy((inputs_t){xq, xd, NULL, NULL}, &w, y, B, K, N, num_threads, path);
}

int vl_matmul_q5_0(const int8_t *xq, const float *xd, const uint8_t *qs, const uint8_t *qh, const float *wd,
                   float *y, int64_t B, int64_t K, int64_t N, int num_threads, int path) {
    weights_t w = {qs, qh, wd, NULL, 16};
    return matmul_legacy((inputs_t){xq, xd, NULL, NULL}, &w, y, B, K, N, num_threads, path);
}

int vl_matmul_q4_1(const int8_t *xq, const float *xd, const float *xs, const uint8_t *qs, const float *wd,
                   const float *wm, float *y, int64_t B, int64_t K, int64_t N, int num_threads, int path) {
    weights_t w = {qs, NULL, wd, wm, 0};
    return matmul_legacy((inputs_t){xq, xd, xs, NULL}, &w, y, B, K, N, num_threads, path);
}

int vl_matmul_q5_1(const int8_t *xq, const float *xd, const float *xs, const uint8_t *qs, const uint8_t *qh,
                   const float *wd, const float *wm, float *y, int64_t B, int64_t K, int64_t N,
                   int num_threads, int path) {
    weights_t w = {qs, qh, wd, wm, 0};
    return matmul_legacy((inputs_t){xq, xd, xs, NULL}, &w, y, B, K, N, num_threads, path);
}
