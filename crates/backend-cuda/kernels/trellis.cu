// Trellis weights (docs/FORMAT.md §4.8): y = sv ⊙ H(C · H(su ⊙ x)) as three
// launches: trellis_had on the activations (signs su, block Hadamard),
// trellis_mv_k{2,3,4} (the product with the codes, decoded from the tiles
// in registers), trellis_had on the result (Hadamard, scales sv, bias).
//
// trellis_had: one block per (h-block, row), h ≤ 128 threads, the
// butterflies in shared memory; the normalization 1/sqrt(h) as the CPU.
//
// trellis_mv: one block per band of 16 weight rows, MV_W warps taking the
// band's tiles in turn; in a tile, lane l decodes elements 8l..8l+7 (row
// l/2, columns 8·(l&1)..+8): the three 32-bit words holding its 8 windows
// are loaded once, each window cut by a funnel shift, its code is
// bytesum(s · MUL) − 510 (one multiply, one dp4a). Activations are read
// through the read-only cache, 8 consecutive floats per lane and row; up to
// MV_R activation rows per block (grid y covers the rest), each row's sum
// independent of the others (batch-invariant). Lanes l and l^1 share a
// weight row (one shuffle), warps are summed in shared memory in a fixed
// order.

#define MV_W 4
#define MV_R 8
#define TR_MUL 0x83DCD12Du

extern "C" __global__ void trellis_had(float* __restrict__ x, const float* __restrict__ pre,
                                       const float* __restrict__ post,
                                       const float* __restrict__ bias, int d, int h) {
    __shared__ float s[128];
    const int t = threadIdx.x;
    const int c = blockIdx.x * h + t;
    float* row = x + (u64)blockIdx.y * d;
    float v = row[c];
    if (pre) v *= pre[c];
    s[t] = v;
    __syncthreads();
    for (int len = 1; len < h; len <<= 1) {
        const float a = s[t], b = s[t ^ len];
        __syncthreads();
        s[t] = (t & len) ? b - a : a + b;
        __syncthreads();
    }
    v = s[t] * (1.0f / sqrtf((float)h));
    if (post) v *= post[c];
    if (bias) v += bias[c];
    row[c] = v;
}

template <int K>
__device__ __forceinline__ void trellis_mv(const u32* __restrict__ codes,
                                           const float* __restrict__ x, float* __restrict__ y,
                                           int rows, int cols, int n) {
    __shared__ float red[MV_W][16][MV_R];
    constexpr int WORDS = 8 * K;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int tcols = cols >> 4;
    const int r0 = blockIdx.y * MV_R;
    const int nr = min(MV_R, n - r0);
    const u32* band = codes + (u64)blockIdx.x * tcols * WORDS;
    const int p0 = 8 * lane * K;
    const int w0 = p0 >> 5, sh = p0 & 31;
    const int col = (lane & 1) * 8;
    float acc[MV_R];
#pragma unroll
    for (int i = 0; i < MV_R; i++) acc[i] = 0.f;
    for (int tc = warp; tc < tcols; tc += MV_W) {
        const u32* tile = band + tc * WORDS;
        const u32 a = __ldg(tile + w0), b = __ldg(tile + (w0 + 1) % WORDS),
                  c = __ldg(tile + (w0 + 2) % WORDS);
        float cv[8];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int q = sh + j * K;
            const u32 st = (q < 32 ? __funnelshift_r(a, b, q) : __funnelshift_r(b, c, q - 32)) & 0xFFFFu;
            cv[j] = (float)((int)__dp4a(st * TR_MUL, 0x01010101u, 0u) - 510);
        }
        const float* xc = x + (u64)r0 * cols + tc * 16 + col;
#pragma unroll
        for (int i = 0; i < MV_R; i++) {
            if (i < nr) {
                const float4 u = __ldg((const float4*)(xc + (u64)i * cols));
                const float4 v = __ldg((const float4*)(xc + (u64)i * cols + 4));
                float s = acc[i];
                s = fmaf(cv[0], u.x, s);
                s = fmaf(cv[1], u.y, s);
                s = fmaf(cv[2], u.z, s);
                s = fmaf(cv[3], u.w, s);
                s = fmaf(cv[4], v.x, s);
                s = fmaf(cv[5], v.y, s);
                s = fmaf(cv[6], v.z, s);
                s = fmaf(cv[7], v.w, s);
                acc[i] = s;
            }
        }
    }
#pragma unroll
    for (int i = 0; i < MV_R; i++) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], 1);
    if ((lane & 1) == 0) {
#pragma unroll
        for (int i = 0; i < MV_R; i++) red[warp][lane >> 1][i] = acc[i];
    }
    __syncthreads();
    if (threadIdx.x < 16 * MV_R) {
        const int r = threadIdx.x & 15, i = threadIdx.x >> 4;
        if (i < nr) {
            float s = 0.f;
#pragma unroll
            for (int w = 0; w < MV_W; w++) s += red[w][r][i];
            y[(u64)(r0 + i) * rows + blockIdx.x * 16 + r] = s;
        }
    }
}

extern "C" __global__ void __launch_bounds__(32 * MV_W)
    trellis_mv_k2(const u32* codes, const float* x, float* y, int rows, int cols, int n) {
    trellis_mv<2>(codes, x, y, rows, cols, n);
}
extern "C" __global__ void __launch_bounds__(32 * MV_W)
    trellis_mv_k3(const u32* codes, const float* x, float* y, int rows, int cols, int n) {
    trellis_mv<3>(codes, x, y, rows, cols, n);
}
extern "C" __global__ void __launch_bounds__(32 * MV_W)
    trellis_mv_k4(const u32* codes, const float* x, float* y, int rows, int cols, int n) {
    trellis_mv<4>(codes, x, y, rows, cols, n);
}
