// Prefill attention over packed sequences, causal, reading K/V from the paged cache (the new
// tokens' rows were written by reshape_and_cache first, so a cached prefix is read the same way).
//
// Grid (ceil(max_query_len / Q_TILE), num_heads, num_seqs); Q_TILE warps per block, warp w owns
// query row blockIdx.x * Q_TILE + w of its sequence (lane l holds dims [l*VPT, (l+1)*VPT)).
// The block walks the keys the last of its rows can see in tiles of KV_TILE: all threads load
// a K and a V tile into shared memory, then each warp folds the tile's keys up to its own
// position into an online softmax. Keys past the block's last position are never read.
#include "common.cuh"

#ifndef HEAD_DIM
#define HEAD_DIM 128        // any multiple of 32
#endif
#ifndef BLOCK_SIZE
#define BLOCK_SIZE 16
#endif
#ifndef Q_TILE
#define Q_TILE 4            // query rows (warps) per thread block
#endif
#ifndef KV_TILE
#define KV_TILE (HEAD_DIM <= 128 ? 32 : 16)   // keys per shared-memory tile (K + V tile <= 32 KiB)
#endif

#define VPT (HEAD_DIM / 32)
static_assert(HEAD_DIM % 32 == 0, "HEAD_DIM must be a multiple of 32");

// Load keys [tile_start, tile_stop) of the sequence into s_k, s_v (KV_TILE, HEAD_DIM) float32.
__device__ __forceinline__ void load_kv_tile(float* s_k, float* s_v, const kv_t* __restrict__ k_cache,
                                             const kv_t* __restrict__ v_cache, const int* table,
                                             int num_kv_heads, int kvh, int tile_start, int tile_stop) {
    for (int idx = threadIdx.x; idx < (tile_stop - tile_start) * HEAD_DIM; idx += blockDim.x) {
        const int t = tile_start + idx / HEAD_DIM, d = idx % HEAD_DIM;
        const long slot = (long)table[t / BLOCK_SIZE] * BLOCK_SIZE + t % BLOCK_SIZE;
        const long at = (slot * num_kv_heads + kvh) * HEAD_DIM + d;
        s_k[idx] = kv_load(k_cache, at);
        s_v[idx] = kv_load(v_cache, at);
    }
}

// out, q (num_tokens, num_heads, HEAD_DIM) float32, sequence s owning rows query_start[s] ..
// query_start[s + 1] - 1; context_lens (num_seqs,) int32: tokens in the cache after this pass;
// block_tables (num_seqs, max_blocks) int32. Query head h reads KV head h / group.
extern "C" __global__ void __launch_bounds__(Q_TILE * 32)
prefill_attention(float* __restrict__ out, const float* __restrict__ q, const kv_t* __restrict__ k_cache,
                  const kv_t* __restrict__ v_cache, const int* __restrict__ query_start,
                  const int* __restrict__ context_lens, const int* __restrict__ block_tables,
                  int max_blocks, int num_kv_heads, int group, float scale) {
    __shared__ float s_k[KV_TILE * HEAD_DIM], s_v[KV_TILE * HEAD_DIM];
    const int head = blockIdx.y, seq = blockIdx.z, kvh = head / group, num_heads = gridDim.y;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int query_len = query_start[seq + 1] - query_start[seq];
    const int first_row = blockIdx.x * Q_TILE;
    if (first_row >= query_len) return;                      // the whole block: no sync is skipped
    const int num_computed = context_lens[seq] - query_len;
    const int row = first_row + warp;
    const bool active = row < query_len;
    const int pos = num_computed + row;                       // this warp's query position
    const int num_keys = num_computed + min(first_row + Q_TILE, query_len);   // keys the block reads
    const long token = (long)query_start[seq] + row;
    const int* table = block_tables + (long)seq * max_blocks;

    float q_reg[VPT], acc[VPT], m = -INFINITY, l = 0.f;
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
        q_reg[i] = active ? q[(token * num_heads + head) * HEAD_DIM + lane * VPT + i] * scale : 0.f;
        acc[i] = 0.f;
    }
    for (int tile_start = 0; tile_start < num_keys; tile_start += KV_TILE) {
        const int tile_stop = min(tile_start + KV_TILE, num_keys);
        load_kv_tile(s_k, s_v, k_cache, v_cache, table, num_kv_heads, kvh, tile_start, tile_stop);
        __syncthreads();
        const int visible_stop = active ? min(tile_stop, pos + 1) : tile_start;   // causal mask
        for (int t = tile_start; t < visible_stop; ++t) {
            const float* k = s_k + (t - tile_start) * HEAD_DIM + lane * VPT;
            const float* v = s_v + (t - tile_start) * HEAD_DIM + lane * VPT;
            float partial = 0.f;
#pragma unroll
            for (int i = 0; i < VPT; ++i) partial += q_reg[i] * k[i];
            const float score = warp_sum(partial);
            const float m_new = fmaxf(m, score);
            const float corr = expf(m - m_new), p = expf(score - m_new);
            l = l * corr + p;
#pragma unroll
            for (int i = 0; i < VPT; ++i) acc[i] = acc[i] * corr + p * v[i];
            m = m_new;
        }
        __syncthreads();
    }
    if (!active) return;
#pragma unroll
    for (int i = 0; i < VPT; ++i) out[(token * num_heads + head) * HEAD_DIM + lane * VPT + i] = acc[i] / l;
}
