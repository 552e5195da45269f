// The 8-bit-activation decode GEMV shared by qmatmul_q8.cu (one weight)
// and moe.cu (each block on its expert's weight): activation quantization
// per block of 32 values, and the dot products of up to NR activation rows
// with R weight rows per warp. compile.rs prepends this file (after the
// prelude) to the kernel files that use it.
//
// Activations: d = max|x|/127, q = round-half-even(x·127/max|x|), bit for
// bit the CPU's Q8_0 activation rounding (ops/qmatmul/q8.rs); per row kp
// int8 values (k padded with zeros to kp, a multiple of 32) and per block
// of 32 one int4 (d's bits, Σq of its first 16, Σq of its last 16, 0), one
// load. For 4-bit weights (`nib`) each 8 values are stored as q0 q2 q4 q6
// q1 q3 q5 q7, the order in which the GEMV unpacks a word's nibbles. With
// two passes the rounding remainder x − d·q is quantized the same way into
// a second set (pass p at rows p·n of xq and xm): about 15-bit
// activations, as the CPU's default (`ActPrecision::Int8Residual`).
//
// Weights: the GPU layout of src/qlayout.rs (see qmatmul.cu), BITS 4 or 8.
// With W = S·c + O per group (S = s·lb, O = s·la + o), a group's part of a
// dot product is d·(S·Σ c·q + O·Σ q): integer dot products (dp4a, four
// byte products a cycle per lane) and the stored sums of q.
//
// Strategy: one warp per R (2 or 4) weight rows; a lane takes a 16-byte
// unit of codes (32 four-bit or 16 eight-bit codes) at a time, lanes on
// consecutive units, so each load instruction of a warp reads 512
// consecutive bytes of a row; the next step's units are loaded before this
// step's arithmetic. A 32-bit word of eight 4-bit codes costs about eight
// instructions (two masks, a shift, two dp4a): (w & 0x0F0F0F0F) holds c0
// c2 c4 c6 and (w >> 4 & 0x0F0F0F0F) c1 c3 c5 c7, met by q stored in that
// order. The NR activation rows of a warp share each unit's codes; a row's
// arithmetic does not depend on which other rows share its warp.

#define Q8WARPS 4

// Quantizes the value v of lane `lane` of a block of 32 (column block
// `blk` of row `a` of n rows, kp columns) in `passes` passes into xq/xm.
__device__ __forceinline__ void quantize_block_q8(float v, int lane, int blk, int a, int n, int kp,
                                                  int passes, int nib, signed char* __restrict__ xq,
                                                  int4* __restrict__ xm) {
    for (int p = 0; p < passes; p++) {
        float amax = fabsf(v);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        const float d = amax / 127.f;
        const float id = amax > 0.f ? 127.f / amax : 0.f;
        const int q = __float2int_rn(__fmul_rn(v, id));
        const u64 row = (u64)p * n + a;
        const int j = lane & 7;
        const int at = nib ? (lane & ~7) + (j & 1) * 4 + (j >> 1) : lane;
        xq[row * kp + blk * 32 + at] = (signed char)q;
        int s = q;
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        const int s1 = __shfl_sync(0xffffffffu, s, 16);
        if (lane == 0) xm[row * (kp / 32) + blk] = make_int4(__float_as_int(d), s, s1, 0);
        v = __fsub_rn(v, __fmul_rn(d, (float)q));
    }
}

// Σ of the four byte products of unsigned a and signed b, plus c.
__device__ __forceinline__ int dp4a_us(u32 a, u32 b, int c) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// The warp's R weight rows j0.. of `codes`/`prm` (m rows, kp padded
// columns, groups of `group`) times nr ≤ NR activation rows: row a is row
// xrow[a] of the quantized activations (n rows per pass) and its results
// go to y[yoff[a] + j], plus bias[j] when given.
template <int BITS, int P, int R, int NR, int PASSES>
__device__ __forceinline__ void q8_rows(const unsigned char* __restrict__ codes,
                                        const void* __restrict__ prm, int j0, int m, int kp,
                                        int group, float la, float lb,
                                        const signed char* __restrict__ xq,
                                        const int4* __restrict__ xm, int n, const int (&xrow)[NR],
                                        int nr, const float* __restrict__ bias,
                                        float* __restrict__ y, const u64 (&yoff)[NR]) {
    constexpr int UC = 128 / BITS;  // codes per 16-byte unit
    const int lane = threadIdx.x & 31;
    const int units = kp / UC;
    const int groups = kp / group;
    const uint4* wrow[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        wrow[r] = (const uint4*)(codes + (u64)min(j0 + r, m - 1) * ((u64)kp * BITS / 8));
    float acc[R][NR];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int a = 0; a < NR; a++) acc[r][a] = 0.f;
    uint4 next[R];
#pragma unroll
    for (int r = 0; r < R; r++) next[r] = lane < units ? __ldg(wrow[r] + lane) : make_uint4(0, 0, 0, 0);
    for (int u0 = 0; u0 < units; u0 += 32) {
        const int u = u0 + lane;
        uint4 cur[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            cur[r] = next[r];
            next[r] = u + 32 < units ? __ldg(wrow[r] + u + 32) : make_uint4(0, 0, 0, 0);
        }
        if (u >= units) continue;
        const int c0 = u * UC;
        float S[R], O[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            float s, o;
            group_params<P>(prm, (u64)min(j0 + r, m - 1) * groups + c0 / group, s, o);
            S[r] = s * lb;
            O[r] = fmaf(s, la, o);
        }
#pragma unroll
        for (int a = 0; a < NR; a++) {
            if (a >= nr) break;
#pragma unroll
            for (int p = 0; p < PASSES; p++) {
                const u64 row = (u64)p * n + xrow[a];
                const int4 meta = xm[row * (kp / 32) + c0 / 32];
                const float d = __int_as_float(meta.x);
                const float qs =
                    (float)(BITS == 4 ? meta.y + meta.z : (c0 & 16) ? meta.z : meta.y);
                const uint4* xp = (const uint4*)(xq + row * kp + c0);
                int dot[R];
#pragma unroll
                for (int r = 0; r < R; r++) dot[r] = 0;
                if (BITS == 4) {
                    const uint4 xa = xp[0], xb = xp[1];
                    const u32 xw[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
#pragma unroll
                    for (int i = 0; i < 4; i++) {
#pragma unroll
                        for (int r = 0; r < R; r++) {
                            const u32 w = i == 0 ? cur[r].x : i == 1 ? cur[r].y : i == 2 ? cur[r].z : cur[r].w;
                            dot[r] = dp4a_us(w & 0x0F0F0F0Fu, xw[2 * i], dot[r]);
                            dot[r] = dp4a_us((w >> 4) & 0x0F0F0F0Fu, xw[2 * i + 1], dot[r]);
                        }
                    }
                } else {
                    const uint4 xa = xp[0];
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        dot[r] = dp4a_us(cur[r].x, xa.x, dot[r]);
                        dot[r] = dp4a_us(cur[r].y, xa.y, dot[r]);
                        dot[r] = dp4a_us(cur[r].z, xa.z, dot[r]);
                        dot[r] = dp4a_us(cur[r].w, xa.w, dot[r]);
                    }
                }
#pragma unroll
                for (int r = 0; r < R; r++)
                    acc[r][a] = fmaf(d, fmaf(S[r], (float)dot[r], O[r] * qs), acc[r][a]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int a = 0; a < NR; a++) {
            const float v = warp_sum(acc[r][a]);
            if (lane == 0 && a < nr && j0 + r < m)
                y[yoff[a] + j0 + r] = v + (bias ? bias[j0 + r] : 0.f);
        }
}
