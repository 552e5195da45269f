// RMSNorm over the rows of x[n, k]: y = x · (1 / sqrt(mean(x²) + eps)) · w,
// the CPU op's arithmetic (ops/rms_norm.rs) in f32. One block of RN_T
// threads per row, each thread's squares summed, then a block reduction.
//
// Rows of up to RN_T·4·RN_V values with k a multiple of 4 (every model's
// hidden and MLA's latent widths) are read once into registers, 16 bytes a
// load, every load of a thread issued before the first is used: one memory
// latency per row instead of one per value a thread takes (the strided
// loop, kept for other widths, took 7 µs at k = 2048 on an H100, a decode
// step running dozens of them).

#define RN_T 256
#define RN_V 4

extern "C" __global__ void __launch_bounds__(RN_T) rms_norm_f32(const float* __restrict__ x,
                                                                const float* __restrict__ w,
                                                                float* __restrict__ y, int k,
                                                                float eps, int vec) {
    __shared__ float part[32];
    const float* xr = x + (u64)blockIdx.x * k;
    float* yr = y + (u64)blockIdx.x * k;
    if (vec && (k & 3) == 0 && k <= RN_T * 4 * RN_V) {
        const int k4 = k >> 2;
        const float4* x4 = (const float4*)xr;
        float4 v[RN_V];
#pragma unroll
        for (int j = 0; j < RN_V; j++) {
            const int i = threadIdx.x + j * RN_T;
            v[j] = i < k4 ? x4[i] : make_float4(0.f, 0.f, 0.f, 0.f);
        }
        float s = 0.f;
#pragma unroll
        for (int j = 0; j < RN_V; j++) {
            s = fmaf(v[j].x, v[j].x, s);
            s = fmaf(v[j].y, v[j].y, s);
            s = fmaf(v[j].z, v[j].z, s);
            s = fmaf(v[j].w, v[j].w, s);
        }
        s = block_sum(s, part);
        const float inv = 1.0f / sqrtf(s / (float)k + eps);
        const float4* w4 = (const float4*)w;
        float4* y4 = (float4*)yr;
#pragma unroll
        for (int j = 0; j < RN_V; j++) {
            const int i = threadIdx.x + j * RN_T;
            if (i < k4) {
                const float4 g = w4[i];
                y4[i] = make_float4(v[j].x * inv * g.x, v[j].y * inv * g.y, v[j].z * inv * g.z,
                                    v[j].w * inv * g.w);
            }
        }
        return;
    }
    float s = 0.f;
    for (int i = threadIdx.x; i < k; i += blockDim.x) s = fmaf(xr[i], xr[i], s);
    s = block_sum(s, part);
    const float inv = 1.0f / sqrtf(s / (float)k + eps);
    for (int i = threadIdx.x; i < k; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}
