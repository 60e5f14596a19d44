// y (M, K) @ W^T for weights stored as GGUF keeps them, (N, K) rows ("out, in"): F32, F16 or Q8_0.
//
// Q8_0 rows are K / 32 blocks of 34 bytes (ggml block_q8_0): a half scale d, then 32 int8 q;
// w = d * q, dequantised in float32 exactly as ggml does.
// GEMV (decode, M <= GEMV_MAX_ROWS): one warp per output column n, lane l reads k = l, l + 32, ...
//   (coalesced along the row), a butterfly sum per input row. Grid (ceil(N / GEMV_WARPS),).
// Tiled (prefill): 32 x 32 output tiles, blockDim (32, 8), each thread 4 rows of one column;
//   32-wide K slices of x and of the dequantised W staged in shared memory. Grid (ceil(N/32), ceil(M/32)).
#include "common.cuh"

#ifndef GEMV_MAX_ROWS
#define GEMV_MAX_ROWS 8
#endif
#ifndef GEMV_WARPS
#define GEMV_WARPS 4
#endif
#define TILE 32
#define TILE_ROWS 8         // blockDim.y of the tiled kernel: TILE / TILE_ROWS outputs per thread

#define Q8_0_BLOCK 32
#define Q8_0_BYTES 34

struct WeightF32 {
    static __device__ __forceinline__ float at(const unsigned char* w, long n, long k, long K) {
        return reinterpret_cast<const float*>(w)[n * K + k];
    }
};

struct WeightF16 {
    static __device__ __forceinline__ float at(const unsigned char* w, long n, long k, long K) {
        return f16_to_f32(reinterpret_cast<const half_bits*>(w)[n * K + k]);
    }
};

struct WeightQ8_0 {
    static __device__ __forceinline__ float at(const unsigned char* w, long n, long k, long K) {
        const unsigned char* block = w + (n * (K / Q8_0_BLOCK) + k / Q8_0_BLOCK) * Q8_0_BYTES;
        const float d = f16_to_f32(*reinterpret_cast<const half_bits*>(block));   // 2-byte aligned
        return d * (float)reinterpret_cast<const signed char*>(block)[2 + k % Q8_0_BLOCK];
    }
};

template <class Weight>
__device__ void gemv(float* __restrict__ y, const float* __restrict__ x, const unsigned char* __restrict__ w,
                     int M, int N, int K) {
    const int n = blockIdx.x * GEMV_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;                                      // whole warps only: no shuffle is split
    float acc[GEMV_MAX_ROWS];
#pragma unroll
    for (int m = 0; m < GEMV_MAX_ROWS; ++m) acc[m] = 0.f;
    for (int k = lane; k < K; k += 32) {
        const float wk = Weight::at(w, n, k, K);
#pragma unroll
        for (int m = 0; m < GEMV_MAX_ROWS; ++m)
            if (m < M) acc[m] += x[(long)m * K + k] * wk;
    }
#pragma unroll
    for (int m = 0; m < GEMV_MAX_ROWS; ++m) {
        if (m >= M) break;
        const float total = warp_sum(acc[m]);
        if (lane == 0) y[(long)m * N + n] = total;
    }
}

template <class Weight>
__device__ void tiled(float* __restrict__ y, const float* __restrict__ x, const unsigned char* __restrict__ w,
                      int M, int N, int K) {
    __shared__ float s_x[TILE][TILE + 1];   // (rows m, k): +1 keeps column reads off one bank
    __shared__ float s_w[TILE][TILE + 1];   // (k, columns n)
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int n0 = blockIdx.x * TILE, m0 = blockIdx.y * TILE;
    float acc[TILE / TILE_ROWS] = {};
    for (int k0 = 0; k0 < K; k0 += TILE) {
        const int k = k0 + tx;
#pragma unroll
        for (int r = 0; r < TILE / TILE_ROWS; ++r) {
            const int i = ty + r * TILE_ROWS;
            s_x[i][tx] = (m0 + i < M && k < K) ? x[(long)(m0 + i) * K + k] : 0.f;
            s_w[tx][i] = (n0 + i < N && k < K) ? Weight::at(w, n0 + i, k, K) : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TILE; ++kk) {
            const float wk = s_w[kk][tx];
#pragma unroll
            for (int r = 0; r < TILE / TILE_ROWS; ++r) acc[r] += s_x[ty + r * TILE_ROWS][kk] * wk;
        }
        __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < TILE / TILE_ROWS; ++r) {
        const int m = m0 + ty + r * TILE_ROWS, n = n0 + tx;
        if (m < M && n < N) y[(long)m * N + n] = acc[r];
    }
}

// y (M, N) float32; x (M, K) float32; w: the raw GGUF bytes of an (N, K) F32, F16 or Q8_0 tensor.
extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_f32(float* y, const float* x, const unsigned char* w, int M, int N, int K) { gemv<WeightF32>(y, x, w, M, N, K); }

extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_f16(float* y, const float* x, const unsigned char* w, int M, int N, int K) { gemv<WeightF16>(y, x, w, M, N, K); }

extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_q8_0(float* y, const float* x, const unsigned char* w, int M, int N, int K) { gemv<WeightQ8_0>(y, x, w, M, N, K); }

extern "C" __global__ void __launch_bounds__(TILE * TILE_ROWS)
matmul_f32(float* y, const float* x, const unsigned char* w, int M, int N, int K) { tiled<WeightF32>(y, x, w, M, N, K); }

extern "C" __global__ void __launch_bounds__(TILE * TILE_ROWS)
matmul_f16(float* y, const float* x, const unsigned char* w, int M, int N, int K) { tiled<WeightF16>(y, x, w, M, N, K); }

extern "C" __global__ void __launch_bounds__(TILE * TILE_ROWS)
matmul_q8_0(float* y, const float* x, const unsigned char* w, int M, int N, int K) { tiled<WeightQ8_0>(y, x, w, M, N, K); }
