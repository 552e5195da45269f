// y[n, m] = x[n, k] · w[m, k]ᵀ (+ bias[m]) for dense weights (f32, f16,
// bf16) and f32 activations, f32 sums.
//
// Strategy (the decode path of dense weights; prompt rows go to
// tc_matmul.cu): one warp per weight row, up to ROWS activation rows per
// warp (blockIdx.y picks the group), so each weight value loaded is used
// ROWS times; `rows` (optional) lists which rows of x and y the launch
// computes. Each lane loads 16 bytes of the row at a time (8 f16/bf16 or
// 4 f32 values; a warp load is 512 consecutive bytes) and the matching
// activations as float4s; rows whose length breaks the 16-byte alignment
// take a scalar loop. A warp reduction per activation row at the end.

#define ROWS 8

template <int T>
__device__ __forceinline__ void unpack16(const uint4& raw, float* out) {
    const u32 wd[4] = {raw.x, raw.y, raw.z, raw.w};
    if (T == 0) {
#pragma unroll
        for (int i = 0; i < 4; i++) out[i] = __uint_as_float(wd[i]);
    } else {
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const u16 h = (u16)(wd[i >> 1] >> (16 * (i & 1)));
            out[i] = T == 1 ? f16_to_f32(h) : bf16_to_f32(h);
        }
    }
}

template <int T>
__device__ void dense_rows(const void* __restrict__ w, const float* __restrict__ x,
                           const u32* __restrict__ rows, const float* __restrict__ bias,
                           float* __restrict__ y, int n, int k, int m) {
    constexpr int VE = T == 0 ? 4 : 8;  // values per 16 bytes
    const int j = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (j >= m) return;
    const int r0 = blockIdx.y * ROWS;
    const int nr = min(ROWS, n - r0);
    float acc[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) acc[r] = 0.f;
    const u64 wrow = (u64)j * k;
    const float* xr[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) xr[r] = x + (u64)(r < nr ? (rows ? rows[r0 + r] : r0 + r) : 0) * k;
    if (k % VE == 0) {
        const uint4* wv = (const uint4*)((const char*)w + wrow * (T == 0 ? 4 : 2));
        for (int u = lane; u < k / VE; u += 32) {
            float wf[VE];
            unpack16<T>(__ldg(wv + u), wf);
            const int c0 = u * VE;
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                if (r >= nr) break;
#pragma unroll
                for (int i = 0; i < VE; i += 4) {
                    const float4 xv = *(const float4*)(xr[r] + c0 + i);
                    acc[r] = fmaf(wf[i], xv.x, acc[r]);
                    acc[r] = fmaf(wf[i + 1], xv.y, acc[r]);
                    acc[r] = fmaf(wf[i + 2], xv.z, acc[r]);
                    acc[r] = fmaf(wf[i + 3], xv.w, acc[r]);
                }
            }
        }
    } else {
        for (int t = lane; t < k; t += 32) {
            const float wv = load_w<T>(w, wrow + t);
#pragma unroll
            for (int r = 0; r < ROWS; r++)
                if (r < nr) acc[r] = fmaf(wv, xr[r][t], acc[r]);
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const float v = warp_sum(acc[r]);
        if (lane == 0 && r < nr)
            y[(u64)(rows ? rows[r0 + r] : r0 + r) * m + j] = v + (bias ? bias[j] : 0.f);
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
