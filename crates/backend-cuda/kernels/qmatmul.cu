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
// rows. A row is read as 32-bit words (32/BITS codes each), 128 words (512
// bytes) per warp step: lane l takes words l, 32 + l, 64 + l, 96 + l, so
// every load instruction of the warp reads 128 consecutive bytes of codes
// and, more importantly, the activations a lane needs for one word sit
// next to its neighbours' (x is f32: 4 bytes per code against half a byte
// of weight, so its loads, served by L1, set the pace when lanes stride
// through x; version 1 gave each lane 32 consecutive codes and measured
// 22 % of the read ceiling). The next step's words are loaded before this
// step's arithmetic. Up to NR activation rows per warp (blockIdx.y picks
// the row group) share each decoded code; `rows`, optional, lists which
// rows of x and y the launch computes. Codes become values through the
// table in shared memory, or, when the table is affine (AFF: lut[c] =
// la + lb·c, the integer and GGUF formats), directly as floats with the
// table folded into the group's (s, o). Per word Σ v·x and Σ x in f32,
// then s and o applied; a warp reduction at the end. Group sizes are
// multiples of 16-byte units of codes, so no word straddles two groups.
// Not yet: tensor cores for large n (tc_matmul.cu has them), f16
// activations.

#define QWARPS 4

template <int BITS, int P, int R, int NR, bool AFF>
__device__ void qgemv(const unsigned char* __restrict__ codes, const void* __restrict__ prm,
                      const float* __restrict__ lut_g, const float* __restrict__ x,
                      const u32* __restrict__ rows, const float* __restrict__ bias,
                      float* __restrict__ y, int n, int k, int m, int kp, int group, float la,
                      float lb) {
    constexpr int CPW = 32 / BITS;  // codes per word
    constexpr u32 MASK = (1u << BITS) - 1;
    __shared__ float lut[1 << BITS];
    if (!AFF) {
        for (int i = threadIdx.x; i < (1 << BITS); i += blockDim.x) lut[i] = lut_g[i];
        __syncthreads();
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int j0 = (blockIdx.x * QWARPS + warp) * R;
    if (j0 >= m) return;
    const int r0 = blockIdx.y * NR;
    const int nr = min(NR, n - r0);
    const int words = kp / CPW;
    const int wpg = group / CPW;  // words per group
    const int groups = kp / group;
    const bool vec_x = (k & 3) == 0;
    const u32* wrow[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        wrow[r] = (const u32*)(codes + (u64)min(j0 + r, m - 1) * ((u64)kp * BITS / 8));
    const float* xr[NR];
#pragma unroll
    for (int a = 0; a < NR; a++)
        xr[a] = x + (u64)(a < nr ? (rows ? rows[r0 + a] : r0 + a) : 0) * k;
    float acc[R][NR];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int a = 0; a < NR; a++) acc[r][a] = 0.f;
    u32 next[R][4];
#pragma unroll
    for (int q = 0; q < 4; q++)
#pragma unroll
        for (int r = 0; r < R; r++) next[r][q] = q * 32 + lane < words ? __ldg(wrow[r] + q * 32 + lane) : 0u;
    for (int w0 = 0; w0 < words; w0 += 128) {
        u32 cur[R][4];
#pragma unroll
        for (int q = 0; q < 4; q++)
#pragma unroll
            for (int r = 0; r < R; r++) {
                cur[r][q] = next[r][q];
                const int wn = w0 + 128 + q * 32 + lane;
                next[r][q] = wn < words ? __ldg(wrow[r] + wn) : 0u;
            }
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const int wi = w0 + q * 32 + lane;
            if (wi >= words) break;
            const int c0 = wi * CPW;
            float xv[NR][CPW], sx[NR];
#pragma unroll
            for (int a = 0; a < NR; a++) {
                sx[a] = 0.f;
                if (a < nr && vec_x && c0 + CPW <= k) {
#pragma unroll
                    for (int i = 0; i < CPW; i += 4) {
                        const float4 v = *(const float4*)(xr[a] + c0 + i);
                        xv[a][i] = v.x;
                        xv[a][i + 1] = v.y;
                        xv[a][i + 2] = v.z;
                        xv[a][i + 3] = v.w;
                    }
                } else {
#pragma unroll
                    for (int i = 0; i < CPW; i++)
                        xv[a][i] = (a < nr && c0 + i < k) ? xr[a][c0 + i] : 0.f;
                }
                if (AFF || (P != 0 && P != 4)) {
#pragma unroll
                    for (int i = 0; i < CPW; i++) sx[a] += xv[a][i];
                }
            }
            const int g = wi / wpg;
#pragma unroll
            for (int r = 0; r < R; r++) {
                float cq[NR];
#pragma unroll
                for (int a = 0; a < NR; a++) cq[a] = 0.f;
                const u32 wd = cur[r][q];
#pragma unroll
                for (int i = 0; i < CPW; i++) {
                    const u32 c = (wd >> (BITS * i)) & MASK;
                    const float v = AFF ? __int_as_float(0x4B000000u | c) - 8388608.f : lut[c];
#pragma unroll
                    for (int a = 0; a < NR; a++) cq[a] = fmaf(v, xv[a][i], cq[a]);
                }
                float s, o;
                group_params<P>(prm, (u64)min(j0 + r, m - 1) * groups + g, s, o);
                if (AFF) {
                    o = fmaf(s, la, o);
                    s *= lb;
                }
#pragma unroll
                for (int a = 0; a < NR; a++) acc[r][a] = fmaf(s, cq[a], fmaf(o, sx[a], acc[r][a]));
            }
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

#define QMATMUL_AFF(BITS, P, R, NR, AFF, NAME)                                               \
    extern "C" __global__ void __launch_bounds__(QWARPS * 32)                                \
    NAME(const unsigned char* codes, const void* prm, const float* lut, const float* x,      \
         const u32* rows, const float* bias, float* y, int n, int k, int m, int kp, int group,  \
         float la, float lb) {                                                               \
        if constexpr (mm_selected(#NAME))                                                    \
            qgemv<BITS, P, R, NR, AFF>(codes, prm, lut, x, rows, bias, y, n, k, m, kp, group, \
                                       la, lb);                                              \
    }

// qmatmul_b<BITS>_p<P>_r<R>_n<NR>: through the table; ..._a: affine table.
#define QMATMUL(BITS, P, R, NR)                                                      \
    QMATMUL_AFF(BITS, P, R, NR, false, qmatmul_b##BITS##_p##P##_r##R##_n##NR)        \
    QMATMUL_AFF(BITS, P, R, NR, true, qmatmul_b##BITS##_p##P##_r##R##_n##NR##_a)

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
