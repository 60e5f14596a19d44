// Paged decode attention: one new query token per sequence against its paged K/V cache.
//
// Grid (num_kv_heads, num_seqs[, num_partitions]): one thread block per query-head GROUP (the
// `group` query heads that share KV head kvh, GQA), so each K and V row is loaded once for the
// whole group. NUM_WARPS warps split the block's tokens round robin (warp w takes tokens
// start + w, start + w + NUM_WARPS, ...); lane l of a warp holds dims [l*VPT, (l+1)*VPT) of
// the head. Each warp keeps an online softmax (running max m, sum l, unnormalised acc) per
// group member; the warps merge through shared memory at the end. Tokens at or past a
// sequence's context length are never read (the loop bound), so stale or NaN slots are inert.
//
// TOKENS_PER_WARP = U > 1: each loop iteration of a warp takes U tokens of its stride (t,
// t + NUM_WARPS, ..., t + (U-1) * NUM_WARPS), loads all U K and V rows first, computes the U
// scores (independent shuffle chains), then does ONE online-softmax update for the U tokens:
// one correction expf and one rescale of acc per U tokens instead of per token, and U rows in
// flight per warp. Tokens of an iteration at or past `stop` are masked (not loaded, score
// -inf, p 0). U = 1 is the one-token loop exactly.
//
// The partitioned variant gives each (kvh, seq) PARTITION of partition_size tokens its own
// block and writes (max, sum, unnormalised acc); paged_attention_reduce merges them.
// cuda/mirror.py replays this decomposition in numpy, step for step.
#include "common.cuh"

#ifndef HEAD_DIM
#define HEAD_DIM 128        // any multiple of 32
#endif
#ifndef BLOCK_SIZE
#define BLOCK_SIZE 16       // tokens per KV cache block
#endif
#ifndef NUM_WARPS
#define NUM_WARPS 4
#endif
#ifndef MAX_GROUP
#define MAX_GROUP 8         // largest n_head / n_head_kv this build serves
#endif
#ifndef TOKENS_PER_WARP
#define TOKENS_PER_WARP 1   // tokens a warp takes per loop iteration, one softmax update for all (see above)
#endif
#ifndef DENSE_LAYOUT
#define DENSE_LAYOUT 0      // 1: K/V (num_seqs, max_blocks * BLOCK_SIZE, ...) contiguous, no table (benchmark baseline)
#endif

#define VPT (HEAD_DIM / 32) // dims per lane
static_assert(HEAD_DIM % 32 == 0, "HEAD_DIM must be a multiple of 32");
static_assert(TOKENS_PER_WARP >= 1, "TOKENS_PER_WARP must be at least 1");

// Element offset of token t's row for KV head kvh: K/V caches (num_blocks, BLOCK_SIZE, num_kv_heads, HEAD_DIM).
__device__ __forceinline__ long kv_row(const int* block_tables, int max_blocks, int seq, int t,
                                       int num_kv_heads, int kvh) {
#if DENSE_LAYOUT
    long slot = (long)seq * max_blocks * BLOCK_SIZE + t;
#else
    long slot = (long)block_tables[(long)seq * max_blocks + t / BLOCK_SIZE] * BLOCK_SIZE + t % BLOCK_SIZE;
#endif
    return (slot * num_kv_heads + kvh) * HEAD_DIM;
}

// warp_sum of N values at once, the N butterflies interleaved step by step (independent shuffle
// chains in flight together); each value sums in warp_sum's order.
template <int N>
__device__ __forceinline__ void warp_sum_each(float x[N]) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
#pragma unroll
        for (int j = 0; j < N; ++j) x[j] += __shfl_xor_sync(0xffffffffu, x[j], offset);
    }
}

// Attention of the group's queries over tokens [start, stop) of one sequence. On return the
// merged result of the whole block is in shared memory: s_m[g], s_l[g], s_acc[g * HEAD_DIM + d]
// (warp 0's slots), acc unnormalised.
__device__ void attend_tokens(const float* __restrict__ q, const kv_t* __restrict__ k_cache,
                              const kv_t* __restrict__ v_cache, const int* __restrict__ block_tables,
                              int max_blocks, int num_kv_heads, int group, float scale,
                              int seq, int kvh, int start, int stop,
                              float* s_m, float* s_l, float* s_acc) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int num_heads = num_kv_heads * group;
    float q_reg[MAX_GROUP][VPT], acc[MAX_GROUP][VPT], m[MAX_GROUP], l[MAX_GROUP];
#pragma unroll
    for (int g = 0; g < MAX_GROUP; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.f;
        const float* q_row = q + ((long)seq * num_heads + kvh * group + g) * HEAD_DIM + lane * VPT;
#pragma unroll
        for (int i = 0; i < VPT; ++i) {
            q_reg[g][i] = g < group ? q_row[i] * scale : 0.f;
            acc[g][i] = 0.f;
        }
    }
    for (int t = start + warp; t < stop; t += TOKENS_PER_WARP * NUM_WARPS) {
        // token j of this iteration is t + j * NUM_WARPS; j = 0 is live (the loop bound), the others
        // are masked at or past stop: not loaded (zeros), score -inf, p 0
        float k[TOKENS_PER_WARP][VPT], v[TOKENS_PER_WARP][VPT];
        bool live[TOKENS_PER_WARP];
#pragma unroll
        for (int j = 0; j < TOKENS_PER_WARP; ++j) {   // every row load issued before any use
            live[j] = j == 0 || t + j * NUM_WARPS < stop;
            if (live[j]) {
                const long row = kv_row(block_tables, max_blocks, seq, t + j * NUM_WARPS, num_kv_heads, kvh)
                               + lane * VPT;
                kv_load_row<VPT>(k_cache + row, k[j]);
                kv_load_row<VPT>(v_cache + row, v[j]);
            } else {
#pragma unroll
                for (int i = 0; i < VPT; ++i) k[j][i] = v[j][i] = 0.f;
            }
        }
#pragma unroll
        for (int g = 0; g < MAX_GROUP; ++g) {   // all MAX_GROUP (q = 0 past group): no branch around the shuffles
            float score[TOKENS_PER_WARP];
#pragma unroll
            for (int j = 0; j < TOKENS_PER_WARP; ++j) {
                score[j] = 0.f;
#pragma unroll
                for (int i = 0; i < VPT; ++i) score[j] += q_reg[g][i] * k[j][i];
            }
            warp_sum_each<TOKENS_PER_WARP>(score);
            float m_new = m[g];
#pragma unroll
            for (int j = 0; j < TOKENS_PER_WARP; ++j) {
                if (!live[j]) score[j] = -INFINITY;
                m_new = fmaxf(m_new, score[j]);
            }
            const float corr = expf(m[g] - m_new);
            float p[TOKENS_PER_WARP];
#pragma unroll
            for (int j = 0; j < TOKENS_PER_WARP; ++j) p[j] = live[j] ? expf(score[j] - m_new) : 0.f;
            l[g] = l[g] * corr + p[0];
#pragma unroll
            for (int j = 1; j < TOKENS_PER_WARP; ++j) l[g] += p[j];
#pragma unroll
            for (int i = 0; i < VPT; ++i) {
                acc[g][i] = acc[g][i] * corr + p[0] * v[0][i];
#pragma unroll
                for (int j = 1; j < TOKENS_PER_WARP; ++j) acc[g][i] += p[j] * v[j][i];
            }
            m[g] = m_new;
        }
    }
    // merge the warps: shared (NUM_WARPS, MAX_GROUP) maxima and sums, (NUM_WARPS, MAX_GROUP, HEAD_DIM) accs
#pragma unroll
    for (int g = 0; g < MAX_GROUP; ++g) {
        if (g >= group) break;
        if (lane == 0) {
            s_m[warp * MAX_GROUP + g] = m[g];
            s_l[warp * MAX_GROUP + g] = l[g];
        }
#pragma unroll
        for (int i = 0; i < VPT; ++i) s_acc[(warp * MAX_GROUP + g) * HEAD_DIM + lane * VPT + i] = acc[g][i];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < group * HEAD_DIM; idx += blockDim.x) {
        const int g = idx / HEAD_DIM, d = idx % HEAD_DIM;
        float m_all = -INFINITY;
        for (int w = 0; w < NUM_WARPS; ++w) m_all = fmaxf(m_all, s_m[w * MAX_GROUP + g]);
        float l_all = 0.f, acc_all = 0.f;
        for (int w = 0; w < NUM_WARPS; ++w) {
            const float weight = expf(s_m[w * MAX_GROUP + g] - m_all);   // 0 for a warp with no tokens
            l_all += s_l[w * MAX_GROUP + g] * weight;
            acc_all += s_acc[(w * MAX_GROUP + g) * HEAD_DIM + d] * weight;
        }
        s_acc[g * HEAD_DIM + d] = acc_all;   // warp 0's slot: only this thread reads or writes it now
        if (d == 0) { s_m[NUM_WARPS * MAX_GROUP + g] = m_all; s_l[NUM_WARPS * MAX_GROUP + g] = l_all; }
    }
    __syncthreads();
}

// U > 1 names a minimum of 1 block per SM: without it ptxas trims the registers to an occupancy
// step and spills a few bytes at U = 4 (head_dim 64, group 4, sm_90: 56 registers, 12 bytes);
// with it no engine config spills. U = 1 keeps the plain bound (today's build, unchanged).
#if TOKENS_PER_WARP > 1
#define DECODE_LAUNCH_BOUNDS __launch_bounds__(NUM_WARPS * 32, 1)
#else
#define DECODE_LAUNCH_BOUNDS __launch_bounds__(NUM_WARPS * 32)
#endif

#define SHARED_MERGE_BUFFERS                                                          \
    __shared__ float s_m[(NUM_WARPS + 1) * MAX_GROUP], s_l[(NUM_WARPS + 1) * MAX_GROUP]; \
    __shared__ float s_acc[NUM_WARPS * MAX_GROUP * HEAD_DIM];

// out, q (num_seqs, num_heads, HEAD_DIM) float32; block_tables (num_seqs, max_blocks) int32;
// context_lens (num_seqs,) int32, each >= 1. Grid (num_kv_heads, num_seqs), NUM_WARPS * 32 threads.
extern "C" __global__ void DECODE_LAUNCH_BOUNDS
paged_attention_decode(float* __restrict__ out, const float* __restrict__ q,
                       const kv_t* __restrict__ k_cache, const kv_t* __restrict__ v_cache,
                       const int* __restrict__ block_tables, const int* __restrict__ context_lens,
                       int max_blocks, int num_kv_heads, int group, float scale) {
    SHARED_MERGE_BUFFERS
    const int kvh = blockIdx.x, seq = blockIdx.y, num_heads = num_kv_heads * group;
    attend_tokens(q, k_cache, v_cache, block_tables, max_blocks, num_kv_heads, group, scale,
                  seq, kvh, 0, context_lens[seq], s_m, s_l, s_acc);
    for (int idx = threadIdx.x; idx < group * HEAD_DIM; idx += blockDim.x) {
        const int g = idx / HEAD_DIM, d = idx % HEAD_DIM;
        out[((long)seq * num_heads + kvh * group + g) * HEAD_DIM + d] =
            s_acc[idx] / s_l[NUM_WARPS * MAX_GROUP + g];
    }
}

// tmp_out (num_seqs, num_heads, max_partitions, HEAD_DIM); max_logits, exp_sums (num_seqs,
// num_heads, max_partitions). Grid (num_kv_heads, num_seqs, max_partitions); partitions at or
// past a sequence's length return at once and are never read by the reduce.
extern "C" __global__ void DECODE_LAUNCH_BOUNDS
paged_attention_decode_partitioned(float* __restrict__ tmp_out, float* __restrict__ max_logits,
                                   float* __restrict__ exp_sums, const float* __restrict__ q,
                                   const kv_t* __restrict__ k_cache, const kv_t* __restrict__ v_cache,
                                   const int* __restrict__ block_tables, const int* __restrict__ context_lens,
                                   int max_blocks, int num_kv_heads, int group, float scale,
                                   int partition_size) {
    SHARED_MERGE_BUFFERS
    const int kvh = blockIdx.x, seq = blockIdx.y, part = blockIdx.z, num_parts = gridDim.z;
    const int context_len = context_lens[seq], start = part * partition_size;
    if (start >= context_len) return;
    const int stop = min(start + partition_size, context_len), num_heads = num_kv_heads * group;
    attend_tokens(q, k_cache, v_cache, block_tables, max_blocks, num_kv_heads, group, scale,
                  seq, kvh, start, stop, s_m, s_l, s_acc);
    for (int idx = threadIdx.x; idx < group * HEAD_DIM; idx += blockDim.x) {
        const int g = idx / HEAD_DIM, d = idx % HEAD_DIM;
        const long head_part = ((long)seq * num_heads + kvh * group + g) * num_parts + part;
        tmp_out[head_part * HEAD_DIM + d] = s_acc[idx];
        if (d == 0) {
            max_logits[head_part] = s_m[NUM_WARPS * MAX_GROUP + g];
            exp_sums[head_part] = s_l[NUM_WARPS * MAX_GROUP + g];
        }
    }
}

// The online-softmax merge of a sequence's partitions: out = sum_p acc_p e^(m_p - M) / sum_p l_p e^(m_p - M).
// Grid (num_heads, num_seqs), any number of threads (each owns dims d, d + blockDim.x, ...).
extern "C" __global__ void
paged_attention_reduce(float* __restrict__ out, const float* __restrict__ tmp_out,
                       const float* __restrict__ max_logits, const float* __restrict__ exp_sums,
                       const int* __restrict__ context_lens, int max_partitions, int partition_size) {
    const int head = blockIdx.x, seq = blockIdx.y, num_heads = gridDim.x;
    const int num_parts = (context_lens[seq] + partition_size - 1) / partition_size;
    const long head_base = ((long)seq * num_heads + head) * max_partitions;
    float m_all = -INFINITY;
    for (int p = 0; p < num_parts; ++p) m_all = fmaxf(m_all, max_logits[head_base + p]);
    for (int d = threadIdx.x; d < HEAD_DIM; d += blockDim.x) {
        float l_all = 0.f, acc_all = 0.f;
        for (int p = 0; p < num_parts; ++p) {
            const float weight = expf(max_logits[head_base + p] - m_all);
            l_all += exp_sums[head_base + p] * weight;
            acc_all += tmp_out[(head_base + p) * HEAD_DIM + d] * weight;
        }
        out[((long)seq * num_heads + head) * HEAD_DIM + d] = acc_all / l_all;
    }
}
