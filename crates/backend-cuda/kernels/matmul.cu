// y[n, m] = x[n, k] · w[m, k]ᵀ (+ bias[m]) for dense weights (f32, f16,
// bf16) and f32 activations, f32 sums.
//
// Strategy (the correctness baseline of the dense path; the tensor-core
// and low-bit kernels come next): one warp per weight row, up to ROWS
// activation rows per warp (blockIdx.y picks the group), so each weight
// value loaded is used ROWS times; `rows` (optional) lists which rows of x
// and y the launch computes. Lanes take consecutive columns
// (coalesced loads), then a warp reduction per activation row.

#define ROWS 8

template <int T>
__device__ void dense_rows(const void* __restrict__ w, const float* __restrict__ x,
                           const u32* __restrict__ rows, const float* __restrict__ bias,
                           float* __restrict__ y, int n, int k, int m) {
    const int j = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (j >= m) return;
    const int r0 = blockIdx.y * ROWS;
    const int nr = min(ROWS, n - r0);
    float acc[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) acc[r] = 0.f;
    const u64 wrow = (u64)j * k;
    u64 xrow[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++)
        xrow[r] = r < nr ? (u64)(rows ? rows[r0 + r] : r0 + r) : 0;
    for (int t = lane; t < k; t += 32) {
        const float wv = load_w<T>(w, wrow + t);
#pragma unroll
        for (int r = 0; r < ROWS; r++)
            if (r < nr) acc[r] = fmaf(wv, x[xrow[r] * k + t], acc[r]);
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const float v = warp_sum(acc[r]);
        if (lane == 0 && r < nr) y[xrow[r] * m + j] = v + (bias ? bias[j] : 0.f);
    }
}

extern "C" __global__ void matmul_f32(const void* w, const float* x, const u32* rows,
                                      const float* bias, float* y, int n, int k, int m) {
    dense_rows<0>(w, x, rows, bias, y, n, k, m);
}
extern "C" __global__ void matmul_f16(const void* w, const float* x, const u32* rows,
                                      const float* bias, float* y, int n, int k, int m) {
    dense_rows<1>(w, x, rows, bias, y, n, k, m);
}
extern "C" __global__ void matmul_bf16(const void* w, const float* x, const u32* rows,
                                       const float* bias, float* y, int n, int k, int m) {
    dense_rows<2>(w, x, rows, bias, y, n, k, m);
}
