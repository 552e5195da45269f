// Helpers shared by every kernel file; compile.rs prepends this text to
// each file before NVRTC sees it, so the kernels need no CUDA headers
// (NVRTC's builtin ones differ across versions).
//
// Element types of stored weights: f32, f16 and bf16 (raw 16-bit
// patterns), widened in registers.

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define INFINITY __int_as_float(0x7f800000)

// Files compiled one function at a time (Kernel::split in compile.rs) get
// -DMM_ONLY="name"; a function whose body is guarded by
// `if constexpr (mm_selected("name"))` then instantiates its templates
// only when it is the one asked for (or when MM_ONLY is not set).
#ifndef MM_ONLY
#define MM_ONLY ""
#endif
__host__ __device__ constexpr bool mm_streq(const char* a, const char* b) {
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}
__host__ __device__ constexpr bool mm_selected(const char* name) {
    return MM_ONLY[0] == 0 || mm_streq(MM_ONLY, name);
}

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// Round to nearest even, as the CPU's `half::f16::from_f32`.
__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float bf16_to_f32(u16 h) {
    return __uint_as_float(((u32)h) << 16);
}

// Element i of a weight of element type T: 0 f32, 1 f16, 2 bf16.
template <int T>
__device__ __forceinline__ float load_w(const void* w, u64 i) {
    if (T == 0) return ((const float*)w)[i];
    if (T == 1) return f16_to_f32(((const u16*)w)[i]);
    return bf16_to_f32(((const u16*)w)[i]);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over a block of up to 1024 threads (a multiple of 32); every thread
// gets the result. `part` is 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* part) {
    v = warp_sum(v);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.f;
        v = warp_sum(v);
        if (lane == 0) part[0] = v;
    }
    __syncthreads();
    v = part[0];
    __syncthreads();
    return v;
}

// Scale and offset of group entry i of a quantized weight's parameters,
// stored in mode P (see src/qlayout.rs): 0 f16 s; 1 f16 (s, o); 2 f16
// (s, z) with o = -s*z; 3 f32 (s, o); 4 f32 s.
template <int P>
__device__ __forceinline__ void group_params(const void* prm, u64 i, float& s, float& o) {
    if (P == 0) {
        s = f16_to_f32(((const u16*)prm)[i]);
        o = 0.f;
    } else if (P == 1 || P == 2) {
        const u32 v = ((const u32*)prm)[i];
        s = f16_to_f32((u16)(v & 0xffffu));
        const float t = f16_to_f32((u16)(v >> 16));
        o = P == 1 ? t : -s * t;
    } else if (P == 3) {
        const float2 v = ((const float2*)prm)[i];
        s = v.x;
        o = v.y;
    } else {
        s = ((const float*)prm)[i];
        o = 0.f;
    }
}

