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
// Models with several query heads per KV head take attend_gqa below.

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

// ---- v2: query heads that share a KV head in one block, keys split ----
//
// For models with G = h/hkv ≥ 2 query heads per KV head (GQA, MQA, and
// multi-head latent attention's absorbed form, where every head shares one
// 576-wide head whose first columns are also the values). A block takes
// one row, up to GB of the G heads of one KV head (grid y: KV head × head
// group) and one split of the row's keys (grid z), and walks the split in
// tiles of TK keys:
//  0. the tile's K rows (and V rows, unless V is the same store as K, as
//     in MLA) are copied into shared memory by every thread at once
//     (16-byte loads, all in flight together: one memory latency a tile),
//     rows padded by 16 bytes so that a warp reading 32 rows at one
//     column hits 32 different banks;
//  1. scores: lane = key, warp = a sub-group of ≤ 2 heads; the queries
//     sit pre-scaled in shared memory (one address per warp: broadcast);
//  2. an online softmax per head over the tile, a warp per head;
//  3. values: thread t owns columns t, t + GT, t + 2·GT and accumulates
//     p[key, head]·V[key, c] for every head of the block.
// So K and V cross the memory bus once per KV head, not once per query
// head as in v1.
//
// Splits: the keys of a decode row (its sequence's q_len is 1: `single`)
// are cut into ⌈n/chunk⌉ ≤ MAXS splits of chunk = TK·⌈n/(TK·MAXS)⌉ keys,
// which fill the GPU when a step has few rows; each split's (max, sum,
// accumulators) go to `part`, and the last block of a (row, group) to
// finish (an atomic count in `count`, reset by that block) merges the
// splits in split order, so the result does not depend on which block ends
// last. Prompt rows take one split. The chunking depends only on the row's
// own length and kind, so a row's arithmetic never depends on its batch,
// and the grid only on the row count and whether any row decodes (decode
// steps recorded as graphs replay with longer contexts).
//
// Dynamic shared memory (ops/attention.rs sizes it): qs[gb·d] floats,
// ps[TK][GB] floats, kt[TK][d + pad], then vt[TK][d + pad] when V is its
// own store; pad is 8 halves or 4 floats.

#define GT 256
#define TK 32
#define GB 16
#define MAXS 16
#define CPT 3

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Eight consecutive values of a staged row from element c (a multiple of 8).
template <int T>
__device__ __forceinline__ void row8(const unsigned char* r, int c, float (&v)[8]) {
    if (T == 0) {
        const float4 a = *(const float4*)((const float*)r + c);
        const float4 b = *(const float4*)((const float*)r + c + 4);
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
        v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    } else {
        const uint4 w = *(const uint4*)((const u16*)r + c);
        const u32 u[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            v[2 * j] = f16_to_f32((u16)(u[j] & 0xffffu));
            v[2 * j + 1] = f16_to_f32((u16)(u[j] >> 16));
        }
    }
}

// Copies the tile's nt rows (global element offsets base[0..nt]) of d
// values of src into dst rows of rb bytes, 16 bytes a thread at a time.
template <int T>
__device__ __forceinline__ void stage(const void* __restrict__ src, const u64* base, int nt,
                                      int d, unsigned char* dst, int rb) {
    const int per = d * (T == 0 ? 4 : 2) / 16;  // 16-byte pieces a row
    for (int i = threadIdx.x; i < nt * per; i += GT) {
        const int r = i / per, c = i - r * per;
        const uint4* g = (const uint4*)((const unsigned char*)src + base[r] * (T == 0 ? 4 : 2));
        *(uint4*)(dst + r * rb + c * 16) = g[c];
    }
}

// Grid (rows, hkv·ngroups, 1 or MAXS), GT threads; gb = ⌈G/ngroups⌉ ≤ GB
// heads per group; d ≤ GT·CPT and a multiple of 8. part: per (row, y,
// split) gb·(d + 2) floats (accumulators, then max and sum per head);
// count: rows·hkv·ngroups zeros.
template <int T>
__device__ void attend_gqa(const float* __restrict__ q, const void* __restrict__ k,
                           const void* __restrict__ v, const u32* __restrict__ tables,
                           const u32* __restrict__ pos, const u32* __restrict__ table0,
                           const u32* __restrict__ single, float* __restrict__ out,
                           float* __restrict__ part, u32* __restrict__ count, int h, int hkv,
                           int d, int bs, float scale, int window, int ngroups, int gb) {
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ float sm_m[GB], sm_l[GB], sm_c[GB];
    __shared__ u64 base_s[TK];
    __shared__ int last;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int row = blockIdx.x, y = blockIdx.y, z = blockIdx.z;
    const int G = h / hkv, kvh = y / ngroups, grp = y - kvh * ngroups;
    const int h0 = kvh * G + grp * gb, nh = min(gb, G - grp * gb);
    if (nh <= 0) return;
    const int len = (int)pos[row] + 1;
    const int start = window > 0 ? max(0, len - window) : 0, nk = len - start;
    int chunk = nk, nsplit = 1;
    if (single[row]) {
        chunk = TK * ((nk + TK * MAXS - 1) / (TK * MAXS));
        nsplit = (nk + chunk - 1) / chunk;
    }
    if (z >= nsplit) return;
    const int k0 = start + z * chunk, k1 = min(len, k0 + chunk);
    const u64 kw = (u64)hkv * d;
    const u32* table = tables + table0[row];
    const int rb = (d + (T == 0 ? 4 : 8)) * (T == 0 ? 4 : 2);  // staged row bytes
    float* qs = (float*)smem;
    float(*ps)[GB] = (float(*)[GB])(qs + gb * d);
    unsigned char* kt = (unsigned char*)(ps + TK);
    unsigned char* vt = k == v ? kt : kt + TK * rb;
    const float* qr = q + ((u64)row * h + h0) * d;
    for (int i = tid; i < nh * d; i += GT) qs[i] = qr[i] * scale;
    if (tid < GB) {
        sm_m[tid] = -INFINITY;
        sm_l[tid] = 0.f;
    }
    float acc[GB][CPT];
#pragma unroll
    for (int a = 0; a < GB; a++)
#pragma unroll
        for (int j = 0; j < CPT; j++) acc[a][j] = 0.f;
    const int hps = (nh + GT / 32 - 1) / (GT / 32);  // heads per warp, ≤ 2
    for (int t0 = k0; t0 < k1; t0 += TK) {
        const int nt = min(TK, k1 - t0);
        __syncthreads();  // the previous tile is consumed
        if (tid < nt) {
            const int t = t0 + tid;
            base_s[tid] = ((u64)table[t / bs] * bs + t % bs) * kw + (u64)kvh * d;
        }
        __syncthreads();
        stage<T>(k, base_s, nt, d, kt, rb);
        if (vt != kt) stage<T>(v, base_s, nt, d, vt, rb);
        __syncthreads();
        // 1. scores: lane = key, this warp's heads
        float s[2] = {0.f, 0.f};
        if (lane < nt) {
            const unsigned char* kr = kt + lane * rb;
            for (int c = 0; c < d; c += 8) {
                float kv8[8];
                row8<T>(kr, c, kv8);
#pragma unroll
                for (int j = 0; j < 2; j++) {
                    if (j < hps) {
                        const float* qh = qs + (warp * hps + j) * d + c;
                        const float4 qa = *(const float4*)qh, qb = *(const float4*)(qh + 4);
                        float a = s[j];
                        a = fmaf(qa.x, kv8[0], a);
                        a = fmaf(qa.y, kv8[1], a);
                        a = fmaf(qa.z, kv8[2], a);
                        a = fmaf(qa.w, kv8[3], a);
                        a = fmaf(qb.x, kv8[4], a);
                        a = fmaf(qb.y, kv8[5], a);
                        a = fmaf(qb.z, kv8[6], a);
                        a = fmaf(qb.w, kv8[7], a);
                        s[j] = a;
                    }
                }
            }
        }
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int hh = warp * hps + j;
            if (j < hps && hh < nh) ps[lane][hh] = lane < nt ? s[j] : -INFINITY;
        }
        __syncthreads();
        // 2. online softmax, a warp per head, a key per lane
        for (int hh = warp; hh < nh; hh += GT / 32) {
            const float a = ps[lane][hh];
            const float mold = sm_m[hh];
            const float mnew = fmaxf(mold, warp_max(a));
            const float pa = expf(a - mnew);
            ps[lane][hh] = pa;
            const float sum = warp_sum(pa);
            if (lane == 0) {
                const float c = expf(mold - mnew);
                sm_c[hh] = c;
                sm_l[hh] = fmaf(sm_l[hh], c, sum);
                sm_m[hh] = mnew;
            }
        }
        __syncthreads();
        // 3. values
#pragma unroll
        for (int a = 0; a < GB; a++) {
            const float c = a < nh ? sm_c[a] : 0.f;
#pragma unroll
            for (int j = 0; j < CPT; j++) acc[a][j] *= c;
        }
        for (int kk = 0; kk < nt; kk++) {
            const unsigned char* vr = vt + kk * rb;
            float vv[CPT];
#pragma unroll
            for (int j = 0; j < CPT; j++) {
                const int c = tid + j * GT;
                vv[j] = c < d ? (T == 0 ? ((const float*)vr)[c] : f16_to_f32(((const u16*)vr)[c]))
                              : 0.f;
            }
            float p[GB];
#pragma unroll
            for (int a = 0; a < GB; a += 4) {
                const float4 w = *(const float4*)&ps[kk][a];
                p[a] = a < nh ? w.x : 0.f;
                p[a + 1] = a + 1 < nh ? w.y : 0.f;
                p[a + 2] = a + 2 < nh ? w.z : 0.f;
                p[a + 3] = a + 3 < nh ? w.w : 0.f;
            }
#pragma unroll
            for (int a = 0; a < GB; a++)
#pragma unroll
                for (int j = 0; j < CPT; j++) acc[a][j] = fmaf(p[a], vv[j], acc[a][j]);
        }
    }
    __syncthreads();
    if (nsplit == 1) {
#pragma unroll
        for (int a = 0; a < GB; a++) {
            if (a >= nh) break;
            float* o = out + ((u64)row * h + h0 + a) * d;
#pragma unroll
            for (int j = 0; j < CPT; j++) {
                const int c = tid + j * GT;
                if (c < d) o[c] = acc[a][j] / sm_l[a];
            }
        }
        return;
    }
    // A split's partial result, then the last block of (row, y) merges.
    const u64 stride = (u64)gb * (d + 2);
    const u64 slot = (u64)row * gridDim.y + y;
    float* pp = part + (slot * MAXS + z) * stride;
#pragma unroll
    for (int a = 0; a < GB; a++) {
        if (a >= nh) break;
#pragma unroll
        for (int j = 0; j < CPT; j++) {
            const int c = tid + j * GT;
            if (c < d) pp[(u64)a * d + c] = acc[a][j];
        }
    }
    if (tid < nh) {
        pp[(u64)gb * d + tid] = sm_m[tid];
        pp[(u64)gb * d + gb + tid] = sm_l[tid];
    }
    __threadfence();
    __syncthreads();
    if (tid == 0) last = atomicAdd(&count[slot], 1u) == (u32)(nsplit - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();
    // Per head: the overall max, each split's factor (into ps), the sum.
    const float* p0 = part + slot * MAXS * stride;
    if (tid < nh) {
        float mx = -INFINITY;
        for (int s2 = 0; s2 < nsplit; s2++) mx = fmaxf(mx, __ldcg(p0 + s2 * stride + (u64)gb * d + tid));
        float l = 0.f;
        for (int s2 = 0; s2 < nsplit; s2++) {
            const float* q2 = p0 + s2 * stride + (u64)gb * d;
            const float f = expf(__ldcg(q2 + tid) - mx);
            ps[s2][tid] = f;
            l = fmaf(f, __ldcg(q2 + gb + tid), l);
        }
        sm_l[tid] = l;
    }
    __syncthreads();
    for (int a = 0; a < nh; a++) {
        float* o = out + ((u64)row * h + h0 + a) * d;
        for (int c = tid; c < d; c += GT) {
            float r = 0.f;
            for (int s2 = 0; s2 < nsplit; s2++)
                r = fmaf(ps[s2][a], __ldcg(p0 + s2 * stride + (u64)a * d + c), r);
            o[c] = r / sm_l[a];
        }
    }
    if (tid == 0) count[slot] = 0;
}

#define ATTENTION_GQA(NAME, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(GT)                                            \
    NAME(const float* q, const void* k, const void* v, const u32* tables, const u32* pos,       \
         const u32* table0, const u32* single, float* out, float* part, u32* count, int h,      \
         int hkv, int d, int bs, float scale, int window, int ngroups, int gb) {                \
        attend_gqa<T>(q, k, v, tables, pos, table0, single, out, part, count, h, hkv, d, bs,    \
                      scale, window, ngroups, gb);                                              \
    }

ATTENTION_GQA(attention_gqa_f32, 0)
ATTENTION_GQA(attention_gqa_f16, 1)
