// Helpers every kernel file includes: halves as unsigned short converted with PTX cvt (no
// cuda_fp16.h, which survives neither PyCUDA's extern "C" wrapper nor NVRTC without include
// paths), warp reductions, and the KV cache element type chosen by KV_F16.
#pragma once

#ifndef KV_F16
#define KV_F16 0            // 1: the KV cache holds IEEE halves; 0: float32
#endif

typedef unsigned short half_bits;   // one IEEE binary16, bit for bit

__device__ __forceinline__ float f16_to_f32(half_bits h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ half_bits f32_to_f16(float f) {
    half_bits h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));   // round to nearest even, as numpy
    return h;
}

#if KV_F16
typedef half_bits kv_t;
__device__ __forceinline__ float kv_load(const kv_t* p, long i) { return f16_to_f32(p[i]); }
__device__ __forceinline__ kv_t kv_from_f32(float f) { return f32_to_f16(f); }
#else
typedef float kv_t;
__device__ __forceinline__ float kv_load(const kv_t* p, long i) { return p[i]; }
__device__ __forceinline__ kv_t kv_from_f32(float f) { return f; }
#endif

// Butterfly sum / max over the 32 lanes of a warp: every lane ends with the result.
// The xor order 16, 8, 4, 2, 1 is the order cuda/mirror.py's warp_sum replays.
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
    return x;
}

// Load VPT consecutive cache elements (a lane's slice of one K or V row) as float32.
template <int VPT>
__device__ __forceinline__ void kv_load_row(const kv_t* p, float out[VPT]) {
    if constexpr (VPT % 4 == 0) {
#pragma unroll
        for (int i = 0; i < VPT; i += 4) {
#if KV_F16
            uint2 packed = *reinterpret_cast<const uint2*>(p + i);   // 4 halves, 8 bytes
            out[i + 0] = f16_to_f32((half_bits)(packed.x & 0xffffu));
            out[i + 1] = f16_to_f32((half_bits)(packed.x >> 16));
            out[i + 2] = f16_to_f32((half_bits)(packed.y & 0xffffu));
            out[i + 3] = f16_to_f32((half_bits)(packed.y >> 16));
#else
            float4 packed = *reinterpret_cast<const float4*>(p + i);  // 16 bytes
            out[i + 0] = packed.x; out[i + 1] = packed.y; out[i + 2] = packed.z; out[i + 3] = packed.w;
#endif
        }
    } else {
#pragma unroll
        for (int i = 0; i < VPT; ++i) out[i] = kv_load(p, i);
    }
}
