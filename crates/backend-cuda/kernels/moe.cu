// The routed experts of a MoE layer on the GPU, routing included, in a
// fixed number of launches whatever the experts chosen (so a decode step
// can be recorded as a graph): moe_route → moe_align → gate/up GEMV →
// moe_glu_q8 → down GEMV → moe_combine (ops/moe.rs launches them).
//
// moe_route: one warp per token (ids and weights ks ≥ k apart per token;
// with ks = k + 1 the last slot is the shared expert, id E, weight 1, so
// it runs in the expert launches and moe_combine adds it last, as a
// separate add would); the router logits of a row become scores
// (softmax or sigmoid), the correction bias picks (never weighs), the
// group limit masks all but the best groups, k rounds of a warp arg-max
// (ties to the lower index) pick the experts, and lane 0 forms the
// weights in the host's order (src/router.rs of mm-core): sums run
// sequentially, exp is computed in double and rounded once (the host's
// f32 exp is correctly rounded), so ids and weights match the host's.
//
// moe_align (vLLM's moe_align_block_size in spirit): one block counts the
// (token, choice) pairs per expert and lays them out in blocks of NR
// pairs of one expert each, pairs in ascending order: blk_expert[b] (−1:
// an unused block of the fixed grid) and blk_pair[b·NR + a] (−1 past the
// expert's last pair). The GEMV grids are sized for the worst case,
// ⌈pairs/NR⌉ + min(E, pairs) blocks, so the launch does not depend on the
// routing.
//
// GEMVs: q8_gemv.cuh's rows, each block on its expert's weight (device
// tables of code and parameter pointers, `cls` the layout class a launch
// takes: experts whose layouts differ run in one launch per class). Gate
// and up run as blockIdx.z = 0 and 1 of one launch into gu[pair, 2·inter];
// moe_glu_q8 quantizes silu(gate)·up for the down GEMV (the same two-pass
// 8-bit activations); down writes out[pair, hidden]; moe_combine sums a
// token's k outputs times their weights in choice order.

// ---- routing ----

__device__ __forceinline__ float exp_rounded(float x) { return (float)exp((double)x); }

// NaN counts as −∞ when ranking.
__device__ __forceinline__ float rank_key(float x) { return x != x ? -INFINITY : x; }

// Arg-max over the warp of (key, index), the lower index on ties; lanes
// without a candidate pass index 0x7fffffff.
__device__ __forceinline__ void warp_argmax(float& key, int& idx) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float k2 = __shfl_xor_sync(0xffffffffu, key, o);
        const int i2 = __shfl_xor_sync(0xffffffffu, idx, o);
        if (k2 > key || (k2 == key && i2 < idx)) {
            key = k2;
            idx = i2;
        }
    }
}

// Dynamic shared memory per warp: scores[E], choice[E] (floats), then
// picked[E] bytes, padded to 4.
extern "C" __global__ void __launch_bounds__(128)
moe_route(const float* __restrict__ logits, const float* __restrict__ bias, int n, int E, int k,
          int sigmoid, int norm, float scale, int n_group, int topk_group, int top2, int ks,
          int* __restrict__ ids, float* __restrict__ wts) {
    extern __shared__ float smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t = blockIdx.x * (blockDim.x >> 5) + warp;
    const int per_warp = 2 * E + (E + 3) / 4;
    float* sc = smem + warp * per_warp;
    float* ch = sc + E;
    unsigned char* picked = (unsigned char*)(ch + E);
    if (t >= n) return;
    const float* row = logits + (u64)t * E;
    if (sigmoid) {
        for (int i = lane; i < E; i += 32)
            sc[i] = __fdiv_rn(1.f, __fadd_rn(1.f, exp_rounded(-row[i])));
    } else {
        float mx = -INFINITY;
        for (int i = lane; i < E; i += 32) mx = fmaxf(mx, row[i]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        for (int i = lane; i < E; i += 32) sc[i] = exp_rounded(__fsub_rn(row[i], mx));
        __syncwarp();
        float sum = 0.f;
        if (lane == 0)
            for (int i = 0; i < E; i++) sum = __fadd_rn(sum, sc[i]);
        sum = __shfl_sync(0xffffffffu, sum, 0);
        for (int i = lane; i < E; i += 32) sc[i] = __fdiv_rn(sc[i], sum);
    }
    for (int i = lane; i < E; i += 32) {
        ch[i] = bias ? __fadd_rn(sc[i], bias[i]) : sc[i];
        picked[i] = 0;
    }
    __syncwarp();
    if (n_group > 1) {
        // Lane g scores group g (n_group ≤ 32, checked by the launcher);
        // topk_group rounds of the warp arg-max keep the best groups.
        const int per = E / n_group;
        float gs = -INFINITY;
        if (lane < n_group) {
            const float* c = ch + lane * per;
            if (!top2) {
                for (int i = 0; i < per; i++) gs = fmaxf(gs, c[i]);
            } else {
                int b1 = 0;
                for (int i = 1; i < per; i++)
                    if (rank_key(c[i]) > rank_key(c[b1])) b1 = i;
                gs = c[b1];
                if (per > 1) {
                    int b2 = b1 == 0 ? 1 : 0;
                    for (int i = 0; i < per; i++)
                        if (i != b1 && rank_key(c[i]) > rank_key(c[b2])) b2 = i;
                    gs = __fadd_rn(gs, c[b2]);
                }
            }
        }
        unsigned keep = 0;
        for (int r = 0; r < topk_group; r++) {
            const bool cand = lane < n_group && !((keep >> lane) & 1u);
            float key = cand ? rank_key(gs) : -INFINITY;
            int idx = cand ? lane : 0x7fffffff;
            warp_argmax(key, idx);
            keep |= 1u << idx;
        }
        for (int i = lane; i < E; i += 32)
            if (!((keep >> (i / per)) & 1u)) ch[i] = -INFINITY;
        __syncwarp();
    }
    int top[16];
    for (int j = 0; j < k; j++) {
        float key = -INFINITY;
        int idx = 0x7fffffff;
        for (int i = lane; i < E; i += 32) {
            if (picked[i]) continue;
            const float v = rank_key(ch[i]);
            if (idx == 0x7fffffff || v > key) {
                key = v;
                idx = i;
            }
        }
        warp_argmax(key, idx);
        top[j] = idx;
        if (lane == 0) picked[idx] = 1;
        __syncwarp();
    }
    if (lane == 0) {
        float w[16];
        float sum = 0.f;
        for (int j = 0; j < k; j++) {
            w[j] = sc[top[j]];
            sum = __fadd_rn(sum, w[j]);
        }
        if (norm) sum = __fadd_rn(sum, sigmoid ? 1e-20f : 0.f);
        for (int j = 0; j < k; j++) {
            float v = norm ? __fdiv_rn(w[j], sum) : w[j];
            ids[(u64)t * ks + j] = top[j];
            wts[(u64)t * ks + j] = __fmul_rn(v, scale);
        }
        if (ks > k) {  // the shared expert, id E, weight 1, last
            ids[(u64)t * ks + k] = E;
            wts[(u64)t * ks + k] = 1.f;
        }
    }
}

// ---- pairs to blocks ----

// One block; shared memory: counts[E] and starts[E] (ints).
extern "C" __global__ void __launch_bounds__(1024)
moe_align(const int* __restrict__ ids, int pairs, int E, int nr, int maxb,
          int* __restrict__ blk_expert, int* __restrict__ blk_pair) {
    extern __shared__ int cnt[];
    int* start = cnt + E;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
    for (int e = tid; e < E; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    for (int p = tid; p < pairs; p += blockDim.x) atomicAdd(&cnt[ids[p]], 1);
    __syncthreads();
    if (tid == 0) {
        int b = 0;
        for (int e = 0; e < E; e++) {
            start[e] = b;
            b += (cnt[e] + nr - 1) / nr;
        }
    }
    for (int b = tid; b < maxb; b += blockDim.x) {
        blk_expert[b] = -1;
        for (int a = 0; a < nr; a++) blk_pair[(u64)b * nr + a] = -1;
    }
    __syncthreads();
    for (int e = warp; e < E; e += warps) {
        if (cnt[e] == 0) continue;
        const int nb = (cnt[e] + nr - 1) / nr;
        for (int b = lane; b < nb; b += 32) blk_expert[start[e] + b] = e;
        int rank = 0;
        for (int p0 = 0; p0 < pairs; p0 += 32) {
            const int p = p0 + lane;
            const bool hit = p < pairs && ids[p] == e;
            const unsigned m = __ballot_sync(0xffffffffu, hit);
            if (hit) {
                const int r = rank + __popc(m & ((1u << lane) - 1u));
                blk_pair[(u64)(start[e] + r / nr) * nr + r % nr] = p;
            }
            rank += __popc(m);
        }
    }
}

// ---- expert GEMVs ----

// The warp's weight rows of expert blk_expert[blockIdx.y]'s matrix
// blockIdx.z (tables hold E pointers per matrix), for the block's pairs:
// activation row pair / xdiv (the token, for gate/up; the pair, for down),
// output y[pair·ldy + blockIdx.z·m + j].
template <int BITS, int P, int R, int NR, int PASSES>
__device__ void moe_q8(const u64* __restrict__ codes_tab, const u64* __restrict__ prm_tab,
                       const int* __restrict__ cls_tab, int cls, int E,
                       const int* __restrict__ blk_expert, const int* __restrict__ blk_pair,
                       int xdiv, const signed char* __restrict__ xq, const int4* __restrict__ xm,
                       int xn, float* __restrict__ y, int ldy, int m, int kp, int group, float la,
                       float lb) {
    const int b = blockIdx.y, z = blockIdx.z;
    const int e = blk_expert[b];
    if (e < 0) return;
    const int slot = z * E + e;
    if (cls_tab[slot] != cls) return;
    const int j0 = (blockIdx.x * Q8WARPS + (threadIdx.x >> 5)) * R;
    if (j0 >= m) return;
    int xrow[NR];
    u64 yoff[NR];
    int nr = 0;
#pragma unroll
    for (int a = 0; a < NR; a++) {
        const int p = blk_pair[(u64)b * NR + a];
        nr += p >= 0;
        xrow[a] = p >= 0 ? p / xdiv : 0;
        yoff[a] = p >= 0 ? (u64)p * ldy + (u64)z * m : 0;
    }
    q8_rows<BITS, P, R, NR, PASSES>((const unsigned char*)codes_tab[slot],
                                    (const void*)prm_tab[slot], j0, m, kp, group, la, lb, xq, xm,
                                    xn, xrow, nr, nullptr, y, yoff);
}

// moe_q8<PASSES>_b<BITS>_p<P>: R = 4 weight rows and NR = 8 pairs per warp.
#define MOE_Q8(PASSES, BITS, P)                                                                  \
    extern "C" __global__ void __launch_bounds__(Q8WARPS * 32) moe_q8##PASSES##_b##BITS##_p##P( \
        const u64* codes_tab, const u64* prm_tab, const int* cls_tab, int cls, int E,            \
        const int* blk_expert, const int* blk_pair, int xdiv, const signed char* xq,             \
        const int4* xm, int xn, float* y, int ldy, int m, int kp, int group, float la,          \
        float lb) {                                                                              \
        if constexpr (mm_selected("moe_q8" #PASSES "_b" #BITS "_p" #P))                          \
            moe_q8<BITS, P, 4, 8, PASSES>(codes_tab, prm_tab, cls_tab, cls, E, blk_expert,       \
                                          blk_pair, xdiv, xq, xm, xn, y, ldy, m, kp, group, la,  \
                                          lb);                                                   \
    }

#define MOE_Q8_P(PASSES, BITS) \
    MOE_Q8(PASSES, BITS, 0)    \
    MOE_Q8(PASSES, BITS, 1)    \
    MOE_Q8(PASSES, BITS, 2)    \
    MOE_Q8(PASSES, BITS, 3)    \
    MOE_Q8(PASSES, BITS, 4)

MOE_Q8_P(1, 4)
MOE_Q8_P(1, 8)
MOE_Q8_P(2, 4)
MOE_Q8_P(2, 8)

// ---- between and after ----

// silu(gate)·up of gu[row, 2·inter] quantized as quantize_x_q8 does (one
// warp per block of 32 values, blockIdx.y the row).
extern "C" __global__ void __launch_bounds__(256)
moe_glu_q8(const float* __restrict__ gu, int n, int inter, int kp, int passes, int nib,
           signed char* __restrict__ xq, int4* __restrict__ xm) {
    const int lane = threadIdx.x & 31;
    const int blk = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int a = blockIdx.y;
    if (blk * 32 >= kp || a >= n) return;
    const int c = blk * 32 + lane;
    float v = 0.f;
    if (c < inter) {
        const float g = gu[(u64)a * 2 * inter + c];
        v = g / (1.0f + expf(-g)) * gu[(u64)a * 2 * inter + inter + c];
    }
    quantize_block_q8(v, lane, blk, a, n, kp, passes, nib, xq, xm);
}

// y[t, c] = Σ_j wts[t·k + j] · out[(t·k + j), c], j in order.
extern "C" __global__ void moe_combine(const float* __restrict__ out, const float* __restrict__ wts,
                                       int n, int k, int hidden, float* __restrict__ y) {
    const u64 total = (u64)n * hidden;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < total;
         i += (u64)gridDim.x * blockDim.x) {
        const u64 t = i / hidden, c = i % hidden;
        float acc = 0.f;
        for (int j = 0; j < k; j++)
            acc = __fadd_rn(acc, __fmul_rn(wts[t * k + j], out[(t * k + j) * hidden + c]));
        y[i] = acc;
    }
}
