// Causal GQA attention of flattened query rows over a paged KV cache
// (the CPU op's contract, ops/attention.rs): out[row, head·d..] =
// softmax(q·Kᵀ·scale) · V over the keys 0..=pos[row] of the row's sequence
// (the last `window` of them with a sliding window).
//
// Layout: q and out [rows, h·d] f32; the stores hold slots × (hkv·d)
// values, f32 or f16; key position t of a row lives in slot
// tables[table0[row] + t / bs]·bs + t % bs.
//
// Strategy (v1, one pass, the correctness baseline of decode and prefill):
// one block of WARPS warps per (row, head); each warp walks every WARPS-th
// chunk of U keys with an online softmax, lanes across the head dimension
// (DPL values each, coalesced loads); the U keys' loads are issued before
// their dot products so U rows are in flight; the warps' partial results
// (max, sum, accumulator) are merged through shared memory at the end.
// Not yet: GQA heads sharing one load of K/V, split-KV for long decode.

#define WARPS 4
#define U 4

template <int T, int DPL>
__device__ void attend(const float* __restrict__ q, const void* __restrict__ k,
                       const void* __restrict__ v, const u32* __restrict__ tables,
                       const u32* __restrict__ pos, const u32* __restrict__ table0,
                       float* __restrict__ out, int h, int hkv, int d, int bs, float scale,
                       int window) {
    __shared__ float sm_m[WARPS], sm_l[WARPS], sm_acc[WARPS][DPL * 32];
    const int row = blockIdx.x, head = blockIdx.y;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kvh = head / (h / hkv);
    const u64 kw = (u64)hkv * d;
    const int len = (int)pos[row] + 1;
    const int start = window > 0 ? max(0, len - window) : 0;
    const u32* table = tables + table0[row];
    const float* qr = q + ((u64)row * h + head) * d;
    float qv[DPL], acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; i++) {
        const int e = lane + 32 * i;
        qv[i] = e < d ? qr[e] * scale : 0.f;
        acc[i] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    for (int t0 = start + warp * U; t0 < len; t0 += WARPS * U) {
        float kv[U][DPL], vv[U][DPL], s[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int t = t0 + u;
            const u64 base = t < len
                ? ((u64)table[t / bs] * bs + t % bs) * kw + (u64)kvh * d : 0;
#pragma unroll
            for (int i = 0; i < DPL; i++) {
                const int e = lane + 32 * i;
                const bool ok = t < len && e < d;
                kv[u][i] = ok ? load_w<T>(k, base + e) : 0.f;
                vv[u][i] = ok ? load_w<T>(v, base + e) : 0.f;
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            float p = 0.f;
#pragma unroll
            for (int i = 0; i < DPL; i++) p = fmaf(qv[i], kv[u][i], p);
            s[u] = t0 + u < len ? warp_sum(p) : -INFINITY;
        }
        float mx = m;
#pragma unroll
        for (int u = 0; u < U; u++) mx = fmaxf(mx, s[u]);
        const float corr = expf(m - mx);
        l *= corr;
#pragma unroll
        for (int i = 0; i < DPL; i++) acc[i] *= corr;
#pragma unroll
        for (int u = 0; u < U; u++) {
            const float p = expf(s[u] - mx);
            l += p;
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[i] = fmaf(p, vv[u][i], acc[i]);
        }
        m = mx;
    }
    if (lane == 0) {
        sm_m[warp] = m;
        sm_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < DPL; i++) sm_acc[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < WARPS; w++) mx = fmaxf(mx, sm_m[w]);
    float sum = 0.f, f[WARPS];
#pragma unroll
    for (int w = 0; w < WARPS; w++) {
        f[w] = expf(sm_m[w] - mx);
        sum = fmaf(f[w], sm_l[w], sum);
    }
    float* o = out + ((u64)row * h + head) * d;
    for (int e = threadIdx.x; e < d; e += blockDim.x) {
        float a = 0.f;
#pragma unroll
        for (int w = 0; w < WARPS; w++) a = fmaf(f[w], sm_acc[w][e], a);
        o[e] = a / sum;
    }
}

#define ATTENTION(NAME, T, DPL)                                                              \
    extern "C" __global__ void __launch_bounds__(WARPS * 32)                                 \
    NAME(const float* q, const void* k, const void* v, const u32* tables, const u32* pos,    \
         const u32* table0, float* out, int h, int hkv, int d, int bs, float scale,          \
         int window) {                                                                       \
        attend<T, DPL>(q, k, v, tables, pos, table0, out, h, hkv, d, bs, scale, window);     \
    }

ATTENTION(attention_f32_d32, 0, 1)
ATTENTION(attention_f32_d64, 0, 2)
ATTENTION(attention_f32_d128, 0, 4)
ATTENTION(attention_f32_d256, 0, 8)
ATTENTION(attention_f16_d32, 1, 1)
ATTENTION(attention_f16_d64, 1, 2)
ATTENTION(attention_f16_d128, 1, 4)
ATTENTION(attention_f16_d256, 1, 8)
// Multi-head latent attention's absorbed form: one 576-wide head
// (kv_lora_rank 512 + rope 64) of keys that are also the values.
ATTENTION(attention_f32_d576, 0, 18)
ATTENTION(attention_f16_d576, 1, 18)
