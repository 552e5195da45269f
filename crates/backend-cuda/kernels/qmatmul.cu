// y[n, m] = x[n, k] · W[m, k]ᵀ (+ bias[m]) for quantized weights in the
// GPU layout of src/qlayout.rs, f32 activations and sums.
//
// Layout: row j of W is kp (k rounded up to 32) codes of BITS (4 or 8)
// bits, little-endian, 16-byte aligned rows; a table lut[2^BITS] of the
// codes' unscaled values; per group of `group` columns two numbers (s, o)
// stored as mode P says (0: f16 s; 1: f16 s, o; 2: f16 s, zero z with
// o = −s·z; 3: f32 s, o; 4: f32 s), and W = s·lut[code] + o.
//
// Strategy (decode GEMV, the memory-bound case): one warp per R weight
// rows, lanes over consecutive 16-byte units of codes (coalesced 512-byte
// warp loads, the next unit's codes loaded before this unit's arithmetic),
// up to NR activation rows per warp (blockIdx.y picks the row group) so
// each decoded code serves NR rows (`rows`, optional, lists which rows of
// x and y the launch computes); codes decoded through the table in
// shared memory; per group Σ lut·x and Σ x in f32, then s and o applied
// once; a warp reduction at the end. Group sizes are multiples of the
// unit (32 codes of 4 bits, 16 of 8 bits) or whole rows.
// Not yet: tensor cores for large n (mma.m16n8k16), f16 activations.

#define QWARPS 4

__device__ __forceinline__ u32 word_of(const uint4& w, int q) {
    return q == 0 ? w.x : q == 1 ? w.y : q == 2 ? w.z : w.w;
}

template <int BITS, int P, int R, int NR>
__device__ void qgemv(const unsigned char* __restrict__ codes, const void* __restrict__ prm,
                      const float* __restrict__ lut_g, const float* __restrict__ x,
                      const u32* __restrict__ rows, const float* __restrict__ bias,
                      float* __restrict__ y, int n, int k, int m, int kp, int group) {
    constexpr int CPW = 32 / BITS;  // codes per 32-bit word
    constexpr int UE = 4 * CPW;     // codes per 16-byte unit
    constexpr u32 MASK = (1u << BITS) - 1;
    __shared__ float lut[1 << BITS];
    for (int i = threadIdx.x; i < (1 << BITS); i += blockDim.x) lut[i] = lut_g[i];
    __syncthreads();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int j0 = (blockIdx.x * QWARPS + warp) * R;
    if (j0 >= m) return;
    const int r0 = blockIdx.y * NR;
    const int nr = min(NR, n - r0);
    const u64 rowbytes = (u64)kp * BITS / 8;
    const int units = kp / UE;
    const int groups = kp / group;
    const bool vec_x = (k & 3) == 0;
    float acc[R][NR];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int a = 0; a < NR; a++) acc[r][a] = 0.f;
    const uint4 zero4 = make_uint4(0, 0, 0, 0);
    uint4 next[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        next[r] = (lane < units && j0 + r < m)
            ? __ldg((const uint4*)(codes + (u64)(j0 + r) * rowbytes) + lane) : zero4;
    for (int u = lane; u < units; u += 32) {
        uint4 w[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            w[r] = next[r];
            next[r] = (u + 32 < units && j0 + r < m)
                ? __ldg((const uint4*)(codes + (u64)(j0 + r) * rowbytes) + u + 32) : zero4;
        }
        const int e0 = u * UE;
        float cq[R][NR], sx[NR];
#pragma unroll
        for (int a = 0; a < NR; a++) {
            sx[a] = 0.f;
#pragma unroll
            for (int r = 0; r < R; r++) cq[r][a] = 0.f;
        }
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const int c0 = e0 + q * CPW;
            float xv[NR][CPW];
#pragma unroll
            for (int a = 0; a < NR; a++) {
                const float* xr = a < nr ? x + (u64)(rows ? rows[r0 + a] : r0 + a) * k : x;
                if (a < nr && vec_x && c0 + CPW <= k) {
#pragma unroll
                    for (int i = 0; i < CPW; i += 4) {
                        const float4 v = *(const float4*)(xr + c0 + i);
                        xv[a][i] = v.x;
                        xv[a][i + 1] = v.y;
                        xv[a][i + 2] = v.z;
                        xv[a][i + 3] = v.w;
                    }
                } else {
#pragma unroll
                    for (int i = 0; i < CPW; i++)
                        xv[a][i] = (a < nr && c0 + i < k) ? xr[c0 + i] : 0.f;
                }
                if (P != 0 && P != 4) {
#pragma unroll
                    for (int i = 0; i < CPW; i++) sx[a] += xv[a][i];
                }
            }
#pragma unroll
            for (int r = 0; r < R; r++) {
                const u32 wd = word_of(w[r], q);
#pragma unroll
                for (int i = 0; i < CPW; i++) {
                    const float v = lut[(wd >> (BITS * i)) & MASK];
#pragma unroll
                    for (int a = 0; a < NR; a++) cq[r][a] = fmaf(v, xv[a][i], cq[r][a]);
                }
            }
        }
        const int g = e0 / group;
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (j0 + r >= m) continue;
            float s, o;
            group_params<P>(prm, (u64)(j0 + r) * groups + g, s, o);
#pragma unroll
            for (int a = 0; a < NR; a++) acc[r][a] = fmaf(s, cq[r][a], fmaf(o, sx[a], acc[r][a]));
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int a = 0; a < NR; a++) {
            const float v = warp_sum(acc[r][a]);
            if (lane == 0 && a < nr && j0 + r < m)
                y[(u64)(rows ? rows[r0 + a] : r0 + a) * m + j0 + r] =
                    v + (bias ? bias[j0 + r] : 0.f);
        }
}

#define QMATMUL(BITS, P, R, NR)                                                              \
    extern "C" __global__ void __launch_bounds__(QWARPS * 32)                                \
    qmatmul_b##BITS##_p##P##_r##R##_n##NR(const unsigned char* codes, const void* prm,       \
                                          const float* lut, const float* x, const u32* rows, \
                                          const float* bias, float* y, int n, int k, int m,  \
                                          int kp, int group) {                               \
        if constexpr (mm_selected("qmatmul_b" #BITS "_p" #P "_r" #R "_n" #NR))              \
            qgemv<BITS, P, R, NR>(codes, prm, lut, x, rows, bias, y, n, k, m, kp, group);    \
    }

#define QMATMUL_ROWS(BITS, P) \
    QMATMUL(BITS, P, 2, 1)    \
    QMATMUL(BITS, P, 2, 4)    \
    QMATMUL(BITS, P, 2, 8)

QMATMUL_ROWS(4, 0)
QMATMUL_ROWS(4, 1)
QMATMUL_ROWS(4, 2)
QMATMUL_ROWS(4, 3)
QMATMUL_ROWS(4, 4)
QMATMUL_ROWS(8, 0)
QMATMUL_ROWS(8, 1)
QMATMUL_ROWS(8, 2)
QMATMUL_ROWS(8, 3)
QMATMUL_ROWS(8, 4)
