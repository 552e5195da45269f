// RMSNorm over the rows of x[n, k]: y = x · (1 / sqrt(mean(x²) + eps)) · w,
// the CPU op's arithmetic (ops/rms_norm.rs) in f32. One block per row;
// each thread sums the squares of a strided slice, then a block reduction.

extern "C" __global__ void rms_norm_f32(const float* __restrict__ x,
                                        const float* __restrict__ w,
                                        float* __restrict__ y, int k, float eps) {
    __shared__ float part[32];
    const float* xr = x + (u64)blockIdx.x * k;
    float* yr = y + (u64)blockIdx.x * k;
    float s = 0.f;
    for (int i = threadIdx.x; i < k; i += blockDim.x) s = fmaf(xr[i], xr[i], s);
    s = block_sum(s, part);
    const float inv = 1.0f / sqrtf(s / (float)k + eps);
    for (int i = threadIdx.x; i < k; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}
