// y[rows[i], m] = x[rows[i], k] · W[m, k]ᵀ (+ bias) on the tensor cores,
// for prompt rows (prefill) in the default precision: f16 operands, f32
// accumulation (mma.sync.m16n8k16, sm_80+).
//
// Weights: WT 0 = quantized in the GPU layout of src/qlayout.rs (BITS 4/8
// codes, lut, group parameters in mode P, see qmatmul.cu), 1 = f16,
// 2 = bf16, 3 = f32; each tile's values are formed in f32 and rounded to
// f16 once. Activations: each row is multiplied by a power of two
// (row_scale, from x_row_scales) that puts its largest magnitude in
// [2^13, 2^14) before the rounding to f16, so no row overflows f16 and
// small rows keep their precision; the product is scaled back exactly.
//
// Strategy (v1): 64×64 output tiles (tokens × weight rows), 4 warps of
// 32×32, K in steps of 32: the block stages the x tile (converted) and the
// weight tile (decoded) in shared memory, rows padded by 16 bytes so the
// fragment loads are free of bank conflicts, then each warp issues 2×4
// m16n8k16 products per 16 columns. `rows` (optional) lists which rows of
// x and y the launch computes (the prompt rows of a mixed step).
// Not yet: cp.async/TMA pipelining, wgmma, larger tiles, split-K.

#define BM 64
#define BN 64
#define BK 32
#define LDS (BK + 8)

__device__ __forceinline__ u32 pack_h2(float a, float b) {
    return (u32)f32_to_f16(a) | ((u32)f32_to_f16(b) << 16);
}

__device__ __forceinline__ void mma16816(float* c, const u32* a, const u32* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Per row of x: the power of two 2^(13 − floor(log2(max|x|))) (1 for a
// zero row). One warp per row.
extern "C" __global__ void x_row_scales(const float* __restrict__ x, const u32* __restrict__ rows,
                                        float* __restrict__ scale, int n, int k) {
    const int i = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (i >= n) return;
    const float* xr = x + (u64)(rows ? rows[i] : i) * k;
    float mx = 0.f;
    for (int c = lane; c < k; c += 32) mx = fmaxf(mx, fabsf(xr[c]));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0) {
        float s = 1.f;
        if (mx > 0.f && mx < INFINITY) {
            const int e = ((__float_as_uint(mx) >> 23) & 0xff) - 127;  // floor(log2), normals
            const int t = max(-126, min(127, 13 - max(e, -126)));
            s = __uint_as_float((u32)(t + 127) << 23);
        }
        scale[i] = s;
    }
}

template <int WT, int BITS, int P>
__device__ void tc_tile(const void* __restrict__ wq, const void* __restrict__ prm,
                        const float* __restrict__ lut_g, const float* __restrict__ x,
                        const u32* __restrict__ rows, const float* __restrict__ xs,
                        const float* __restrict__ bias, float* __restrict__ y, int n, int k,
                        int m, int kp, int group) {
    __shared__ __align__(16) u16 As[BM][LDS];
    __shared__ __align__(16) u16 Bs[BN][LDS];
    __shared__ float lut[WT == 0 ? (1 << BITS) : 1];
    if (WT == 0) {
        for (int i = threadIdx.x; i < (1 << BITS); i += blockDim.x) lut[i] = lut_g[i];
        __syncthreads();
    }
    const int t = threadIdx.x, warp = t >> 5, lane = t & 31;
    const int g = lane >> 2, tig = lane & 3;
    const int i0 = blockIdx.y * BM, j0 = blockIdx.x * BN;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    // Staging: thread t fills 16 columns (half h) of tile row t / 2.
    const int sr = t >> 1, sh = (t & 1) * 16;
    const int ai = i0 + sr;
    const bool arow = ai < n;
    const float* xr = arow ? x + (u64)(rows ? rows[ai] : ai) * k : x;
    const float asc = arow ? xs[ai] : 0.f;
    const int bj = j0 + sr;
    const bool brow = bj < m;
    const int groups = kp / group;
    float acc[2][4][4];
#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
        for (int b = 0; b < 4; b++)
#pragma unroll
            for (int c = 0; c < 4; c++) acc[a][b][c] = 0.f;
    const int kend = WT == 0 ? kp : k;
    for (int k0 = 0; k0 < kend; k0 += BK) {
        const int c0 = k0 + sh;
        // x tile: 16 values of row ai from column c0, scaled, to f16.
        float v[16];
        if (arow && (k & 3) == 0 && c0 + 16 <= k) {
#pragma unroll
            for (int q = 0; q < 16; q += 4) {
                const float4 f = *(const float4*)(xr + c0 + q);
                v[q] = f.x;
                v[q + 1] = f.y;
                v[q + 2] = f.z;
                v[q + 3] = f.w;
            }
        } else {
#pragma unroll
            for (int q = 0; q < 16; q++) v[q] = (arow && c0 + q < k) ? xr[c0 + q] : 0.f;
        }
        u32 hv[8];
#pragma unroll
        for (int q = 0; q < 8; q++) hv[q] = pack_h2(v[2 * q] * asc, v[2 * q + 1] * asc);
        *(uint4*)&As[sr][sh] = make_uint4(hv[0], hv[1], hv[2], hv[3]);
        *(uint4*)&As[sr][sh + 8] = make_uint4(hv[4], hv[5], hv[6], hv[7]);
        // Weight tile: 16 values of row bj from column c0, to f16.
        float w[16];
        if (WT == 0) {
            if (brow) {
                const unsigned char* wr =
                    (const unsigned char*)wq + (u64)bj * ((u64)kp * BITS / 8);
                float s, o;
                group_params<P>(prm, (u64)bj * groups + c0 / group, s, o);
                if (BITS == 4) {
                    const uint2 c = *(const uint2*)(wr + c0 / 2);
#pragma unroll
                    for (int q = 0; q < 8; q++) {
                        w[q] = fmaf(s, lut[(c.x >> (4 * q)) & 15], o);
                        w[q + 8] = fmaf(s, lut[(c.y >> (4 * q)) & 15], o);
                    }
                } else {
                    const uint4 c = *(const uint4*)(wr + c0);
                    const u32 cw[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
                    for (int q = 0; q < 16; q++)
                        w[q] = fmaf(s, lut[(cw[q >> 2] >> (8 * (q & 3))) & 255], o);
                }
            } else {
#pragma unroll
                for (int q = 0; q < 16; q++) w[q] = 0.f;
            }
        } else {
#pragma unroll
            for (int q = 0; q < 16; q++)
                w[q] = (brow && c0 + q < k) ? load_w<(WT == 3 ? 0 : WT)>(wq, (u64)bj * k + c0 + q) : 0.f;
        }
#pragma unroll
        for (int q = 0; q < 8; q++) hv[q] = pack_h2(w[2 * q], w[2 * q + 1]);
        *(uint4*)&Bs[sr][sh] = make_uint4(hv[0], hv[1], hv[2], hv[3]);
        *(uint4*)&Bs[sr][sh + 8] = make_uint4(hv[4], hv[5], hv[6], hv[7]);
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            u32 af[2][4], bf[4][2];
#pragma unroll
            for (int a = 0; a < 2; a++) {
                const int r = wm + 16 * a + g;
                af[a][0] = *(const u32*)&As[r][kk + 2 * tig];
                af[a][1] = *(const u32*)&As[r + 8][kk + 2 * tig];
                af[a][2] = *(const u32*)&As[r][kk + 2 * tig + 8];
                af[a][3] = *(const u32*)&As[r + 8][kk + 2 * tig + 8];
            }
#pragma unroll
            for (int b = 0; b < 4; b++) {
                const int c = wn + 8 * b + g;
                bf[b][0] = *(const u32*)&Bs[c][kk + 2 * tig];
                bf[b][1] = *(const u32*)&Bs[c][kk + 2 * tig + 8];
            }
#pragma unroll
            for (int a = 0; a < 2; a++)
#pragma unroll
                for (int b = 0; b < 4; b++) mma16816(acc[a][b], af[a], bf[b]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int i = i0 + wm + 16 * a + g + 8 * half;
            if (i >= n) continue;
            const float inv = 1.f / xs[i];
            float* yr = y + (u64)(rows ? rows[i] : i) * m;
#pragma unroll
            for (int b = 0; b < 4; b++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int j = j0 + wn + 8 * b + 2 * tig + e;
                    if (j < m) yr[j] = acc[a][b][2 * half + e] * inv + (bias ? bias[j] : 0.f);
                }
        }
}

#define TC(NAME, WT, BITS, P)                                                                \
    extern "C" __global__ void __launch_bounds__(128)                                         \
    NAME(const void* wq, const void* prm, const float* lut, const float* x, const u32* rows, \
         const float* xs, const float* bias, float* y, int n, int k, int m, int kp,           \
         int group) {                                                                         \
        if constexpr (mm_selected(#NAME))                                                     \
            tc_tile<WT, BITS, P>(wq, prm, lut, x, rows, xs, bias, y, n, k, m, kp, group);    \
    }

TC(tc_matmul_f16, 1, 0, 0)
TC(tc_matmul_bf16, 2, 0, 0)
TC(tc_matmul_f32, 3, 0, 0)
TC(tc_matmul_b4_p0, 0, 4, 0)
TC(tc_matmul_b4_p1, 0, 4, 1)
TC(tc_matmul_b4_p2, 0, 4, 2)
TC(tc_matmul_b4_p3, 0, 4, 3)
TC(tc_matmul_b4_p4, 0, 4, 4)
TC(tc_matmul_b8_p0, 0, 8, 0)
TC(tc_matmul_b8_p1, 0, 8, 1)
TC(tc_matmul_b8_p2, 0, 8, 2)
TC(tc_matmul_b8_p3, 0, 8, 3)
TC(tc_matmul_b8_p4, 0, 8, 4)
