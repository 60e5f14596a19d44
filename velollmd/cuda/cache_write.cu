// reshape_and_cache: the new tokens' K and V rows into their cache slots (vLLM's name).
//
// Grid (num_tokens,), any number of threads: thread i stores elements i, i + blockDim.x, ... of
// the token's (num_kv_heads * HEAD_DIM) row, converting to the cache type (cvt.rn for halves).
// A negative slot is padding: nothing is written.
#include "common.cuh"

#ifndef HEAD_DIM
#define HEAD_DIM 128
#endif

// key, value (num_tokens, num_kv_heads, HEAD_DIM) float32; slot_mapping (num_tokens,) int64;
// k_cache, v_cache (num_blocks * block_size, num_kv_heads, HEAD_DIM): a slot is block * block_size + offset.
extern "C" __global__ void
reshape_and_cache(kv_t* __restrict__ k_cache, kv_t* __restrict__ v_cache, const float* __restrict__ key,
                  const float* __restrict__ value, const long long* __restrict__ slot_mapping,
                  int num_kv_heads) {
    const long token = blockIdx.x;
    const long long slot = slot_mapping[token];
    if (slot < 0) return;
    const int row_len = num_kv_heads * HEAD_DIM;
    for (int i = threadIdx.x; i < row_len; i += blockDim.x) {
        k_cache[slot * row_len + i] = kv_from_f32(key[token * row_len + i]);
        v_cache[slot * row_len + i] = kv_from_f32(value[token * row_len + i]);
    }
}
