// The element-wise and row-wise pieces of a llama layer: RMSNorm, RoPE (both pairings),
// SiLU-mul, the embedding gather and a bias row added to every row. Float32 activations; cuda/mirror.py replays each
// decomposition and engine/ops.py is the reference.
#include "common.cuh"

#ifndef NORM_THREADS
#define NORM_THREADS 256    // threads of an rms_norm block: a multiple of 32, at most 1024
#endif

// out, x (num_rows, dim) (out may be x); weight (dim,). Grid (num_rows,), NORM_THREADS threads.
// Thread i sums x^2 over i, i + NORM_THREADS, ...; warps reduce by butterfly, then warp 0
// reduces the NORM_THREADS / 32 warp sums.
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
rms_norm(float* out, const float* x, const float* __restrict__ weight, int dim, float eps) {
    __shared__ float s_warp[NORM_THREADS / 32];
    __shared__ float s_scale;
    const float* row = x + (long)blockIdx.x * dim;
    float sum_sq = 0.f;
    for (int i = threadIdx.x; i < dim; i += NORM_THREADS) sum_sq += row[i] * row[i];
    sum_sq = warp_sum(sum_sq);
    if (threadIdx.x % 32 == 0) s_warp[threadIdx.x / 32] = sum_sq;
    __syncthreads();
    if (threadIdx.x < 32) {
        float total = threadIdx.x < NORM_THREADS / 32 ? s_warp[threadIdx.x] : 0.f;
        total = warp_sum(total);
        if (threadIdx.x == 0) s_scale = 1.f / sqrtf(total / dim + eps);
    }
    __syncthreads();
    float* out_row = out + (long)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += NORM_THREADS) out_row[i] = row[i] * s_scale * weight[i];
}

// Rotate the first n_rot dims of every head in place. x (num_tokens, num_heads, head_dim);
// cos, sin (num_tokens, n_rot / 2) (the engine computes them once per pass, in float64).
// neox 0: pairs (2i, 2i + 1) (llama); 1: pairs (i, i + n_rot / 2) (qwen2/qwen3).
// Grid (num_tokens,), any threads: thread j handles pairs j, j + blockDim.x, ... of
// num_heads * n_rot / 2, pair p being head p / (n_rot / 2), index p % (n_rot / 2).
extern "C" __global__ void
rope(float* x, const float* __restrict__ cos, const float* __restrict__ sin, int num_heads, int head_dim,
     int n_rot, int neox) {
    const int half = n_rot / 2;
    const long token = blockIdx.x;
    for (int p = threadIdx.x; p < num_heads * half; p += blockDim.x) {
        const int head = p / half, i = p % half;
        float* h = x + (token * num_heads + head) * head_dim;
        const int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
        const float c = cos[token * half + i], s = sin[token * half + i];
        const float x0 = h[i0], x1 = h[i1];
        h[i0] = x0 * c - x1 * s;
        h[i1] = x0 * s + x1 * c;
    }
}

// out (num_tokens, n_ff) = silu(gate) * up, gate_up (num_tokens, 2 * n_ff): gate then up.
// Grid-stride over the num_tokens * n_ff outputs.
extern "C" __global__ void
silu_mul(float* __restrict__ out, const float* __restrict__ gate_up, int num_tokens, int n_ff) {
    const long total = (long)num_tokens * n_ff;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        const long token = i / n_ff, j = i % n_ff;
        const float gate = gate_up[token * 2 * n_ff + j], up = gate_up[token * 2 * n_ff + n_ff + j];
        out[i] = gate / (1.f + expf(-gate)) * up;
    }
}

// out (num_tokens, n_embd) float32 = table[token_ids] with table (n_vocab, n_embd). The host
// checks ids against n_vocab; grid (num_tokens,), threads stride over n_embd.
extern "C" __global__ void
embedding_f32(float* __restrict__ out, const float* __restrict__ table, const int* __restrict__ token_ids,
              int n_embd) {
    const long token = blockIdx.x, row = token_ids[token];
    for (int i = threadIdx.x; i < n_embd; i += blockDim.x) out[token * n_embd + i] = table[row * n_embd + i];
}

extern "C" __global__ void
embedding_f16(float* __restrict__ out, const half_bits* __restrict__ table, const int* __restrict__ token_ids,
              int n_embd) {
    const long token = blockIdx.x, row = token_ids[token];
    for (int i = threadIdx.x; i < n_embd; i += blockDim.x)
        out[token * n_embd + i] = f16_to_f32(table[row * n_embd + i]);
}

// y (num_rows, n) += bias (n,) on every row (qwen2's Q/K/V biases). Grid-stride over the elements.
extern "C" __global__ void
add_bias(float* __restrict__ y, const float* __restrict__ bias, int num_rows, int n) {
    const long total = (long)num_rows * n;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x)
        y[i] += bias[i % n];
}
