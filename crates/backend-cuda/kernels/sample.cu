// Token sampling on the GPU (mm_core::sample's arithmetic; src/ops/sample.rs
// packs the inputs): only the sampled ids leave the device.
//
// Layout. logits [rows, V] f32 row-major; work [m, V] f32 scratch (one row
// per sampled entry e, blockIdx.x); ids [m] u32 (0xffffffff: nothing to
// draw from, the host turns it into an error). meta (u32 words): per entry
// ENTRY_WORDS words: logits row, draws (0/1), temperature, top_k (0: all),
// top_p, min_p, r, first edit word, edits, repeat penalty (floats as bits);
// then the edits, EDIT_WORDS words each: token, first bias word, biases,
// flags (1: repetition penalty, 2: subtract), subtrahend; then the bias
// values. An edit is one distinct token of a row's bias list, repetition
// window and produced tokens, so one thread applies its changes in the
// host's order (biases in list order, then the penalty, then presence +
// frequency·n): the same f32 operations as the host.
//
// Strategy: one block of 1024 threads per entry. The row is copied into
// work (divided by the temperature when it draws) and edited; a greedy row
// without edits reads the logits as they are. Greedy: an arg-max reduction
// (first index on ties; NaN never wins, except at index 0, as the host's
// loop). A draw never sorts the vocabulary: every selection the
// host makes on its sorted candidates (value descending, ties to the lower
// id) is a cut at some position of that order, found by a radix descent
// over an order-preserving 32-bit key of v: levels of 11, 8, 8 and 5 bits
// (the first one wide: logits crowd a few exponents, and a wide first
// level spreads them over more bins, so fewer atomics collide and later
// levels read fewer elements), each a
// histogram of (count, mass) of the elements that share the key prefix
// chosen so far, scanned from the largest key for the first bin where the
// running count reaches a target count or the running mass a target
// mass; at the last level the bin is one value, its ties taken in id
// order. Masses are exp(v − max) in 2^-40 fixed point, summed with integer
// atomics: exact and independent of thread order, so a row's result does
// not depend on scheduling. Descents: the top-k-th candidate (the mass S
// of the top k), the top-p / min-p cut (the candidates' count n and mass
// M), and the draw (mass ceil(r·M) within the first n); then the id of
// the chosen tie. The first level's histogram is built once and shared by
// the three descents; the other levels read only the elements of the
// chosen bin. Why: sorting 150k values per row costs more than reading
// them a dozen times from L2, and the cut positions are all the host's
// sort is used for.
//
// Agreement with the host: this sums exact fixed point (exp within an ulp
// or two of the host's), so its cut-offs and draw lie within ~1e-6 of the
// kept mass of the exact (f64) ones (tested at mm_conformance::SAMPLE_TOL
// = 1e-4). The host sums f32 probabilities in candidate order, which drift
// from exact with the number of candidates (up to ~1e-3 of the mass over
// 150k, far less over the few a peaked top-p row keeps): the ids agree
// except where r·total or a cut-off lies within that drift of a boundary.

#define SAMPLE_THREADS 1024
#define ENTRY_WORDS 10
#define EDIT_WORDS 5
#define NO_TOKEN 0xffffffffu
#define ALL_MASS 0xffffffffffffffffull
#define FIX_ONE 1099511627776.0  // 2^40
#define TOP_BINS 2048               // the first level's 11 bits
#define BINS 256                    // the other levels' bins at most

// Larger v, larger key; -0 below +0 (as f32::total_cmp). NaN is skipped
// before a key is taken.
__device__ __forceinline__ u32 order_key(float v) {
    const u32 u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float key_value(u32 k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// The host's exp(v - max) (expf: within 2 ulp of the host's, far inside
// the tolerance), +inf candidates sharing the mass when the max is +inf.
__device__ __forceinline__ float weight(float v, float mx) {
    if (mx == INFINITY) return v == INFINITY ? 1.f : 0.f;
    return expf(v - mx);
}

__device__ __forceinline__ u64 fixed(float w) { return __double2ull_rn((double)w * FIX_ONE); }

// Max (MAX) or sum of v over a warp / a block; every thread gets the
// result. `part` holds 32 values of shared memory.
template <bool MAX, typename T>
__device__ __forceinline__ T warp_reduce(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const T w = __shfl_xor_sync(0xffffffffu, v, o);
        v = MAX ? (v > w ? v : w) : v + w;
    }
    return v;
}

template <bool MAX, typename T>
__device__ T block_reduce(T v, T* part) {
    v = warp_reduce<MAX>(v);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = warp_reduce<MAX>(lane < (int)(blockDim.x >> 5) ? part[lane] : (T)0);
        if (lane == 0) part[0] = v;
    }
    __syncthreads();
    v = part[0];
    __syncthreads();
    return v;
}

// (value, index) with the host's order: larger value, then lower index;
// index NO_TOKEN is empty.
__device__ __forceinline__ bool better(float v, u32 i, float bv, u32 bi) {
    if (i == NO_TOKEN) return false;
    if (bi == NO_TOKEN) return true;
    return v > bv || (v == bv && i < bi);
}

__device__ __forceinline__ void warp_argmax(float& bv, u32& bi) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const u32 oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (better(ov, oi, bv, bi)) {
            bv = ov;
            bi = oi;
        }
    }
}

// First index of the largest non-NaN value of x[0..V) (NO_TOKEN if none).
__device__ u32 block_argmax(const float* x, int V, float* pv, u32* pi) {
    float bv = -INFINITY;
    u32 bi = NO_TOKEN;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float v = x[i];
        if (v == v && better(v, (u32)i, bv, bi)) {
            bv = v;
            bi = (u32)i;
        }
    }
    warp_argmax(bv, bi);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) {
        pv[warp] = bv;
        pi[warp] = bi;
    }
    __syncthreads();
    if (warp == 0) {
        const bool in = lane < (int)(blockDim.x >> 5);
        bv = in ? pv[lane] : -INFINITY;
        bi = in ? pi[lane] : NO_TOKEN;
        warp_argmax(bv, bi);
        if (lane == 0) pi[0] = bi;
    }
    __syncthreads();
    bi = pi[0];
    __syncthreads();
    return bi;
}

// A descent's state in shared memory: the bin chosen at this level and the
// count and mass of every element before it in the order.
struct Pick {
    u32 bin;
    u32 above;
    u64 mass_above;
};

// Run by warp 0: among bins nb-1 … 0 (descending keys; nb a multiple of
// 32), the first non-empty one where the running count (from `above`)
// reaches tc or the running mass (from `mass_above`) reaches tm; the last
// non-empty one if none does.
__device__ void find_bin(const u32* cnt, const u64* mass, int nb, u32 above, u64 mass_above,
                         u32 tc, u64 tm, Pick* out) {
    const int lane = threadIdx.x & 31;
    const int per = nb >> 5;
    // Lane l holds bins nb-1 - per·l down to nb - per·(l+1).
    const int hi = nb - 1 - per * lane;
    u32 c = 0;
    u64 m = 0;
    for (int j = 0; j < per; ++j) {
        c += cnt[hi - j];
        m += mass[hi - j];
    }
    // Exclusive prefix over lanes.
    u32 pc = c;
    u64 pm = m;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u32 oc = __shfl_up_sync(0xffffffffu, pc, o);
        const u64 om = __shfl_up_sync(0xffffffffu, pm, o);
        if (lane >= o) {
            pc += oc;
            pm += om;
        }
    }
    pc -= c;
    pm -= m;
    const u32 run_c = above + pc + c;
    const u64 run_m = mass_above + pm + m;
    const bool cross = c > 0 && (run_c >= tc || (tm != ALL_MASS && run_m >= tm));
    const u32 hits = __ballot_sync(0xffffffffu, cross);
    const u32 full = __ballot_sync(0xffffffffu, c > 0);
    // The first crossing lane, else the last lane holding elements.
    const int who = hits ? __ffs(hits) - 1 : (full ? 31 - __clz(full) : 0);
    if (lane == who) {
        u32 rc = above + pc, before_c = rc;
        u64 rm = mass_above + pm, before_m = rm;
        int pick = -1;
        for (int j = 0; j < per; ++j) {
            const int b = hi - j;
            if (cnt[b] == 0) continue;
            pick = b;
            before_c = rc;
            before_m = rm;
            rc += cnt[b];
            rm += mass[b];
            // With a crossing lane: its first crossing bin; else the last
            // non-empty bin.
            if (hits && (rc >= tc || (tm != ALL_MASS && rm >= tm))) break;
        }
        out->bin = pick < 0 ? 0u : (u32)pick;
        out->above = before_c;
        out->mass_above = before_m;
    }
}

// Where a descent stops: the key, the elements before it, its ties and
// each tie's mass, and the 1-based rank q of the stopping tie by id.
struct Cut {
    u32 key;
    u32 above;
    u64 mass_above;
    u32 ties;
    u64 each;
    u32 q;
};

__device__ __forceinline__ u32 cut_count(const Cut& c) { return c.above + c.q; }
__device__ __forceinline__ u64 cut_mass(const Cut& c) { return c.mass_above + c.each * c.q; }

struct Shared {
    u32 top_cnt[TOP_BINS];
    u64 top_mass[TOP_BINS];
    u32 cnt[BINS];
    u64 mass[BINS];
    Pick pick;
    u64 part64[32];
    u32 part32[32];
    float partf[32];
    u32 found;
};

// The first position (0-based, in the candidates' order) where the count
// reaches tc or the mass reaches tm (tm = ALL_MASS: no mass target); tc is
// at most the number of candidates.
__device__ Cut descend(const float* x, int V, float mx, Shared& s, u32 tc, u64 tm) {
    u32 prefix = 0, above = 0;
    u64 mass_above = 0;
    u32 ties = 0;
    u64 total = 0;
    for (int level = 0; level < 4; ++level) {
        const int width = level == 0 ? 11 : (level == 3 ? 5 : 8);
        const int shift = level == 0 ? 21 : (level == 1 ? 13 : (level == 2 ? 5 : 0));
        const u32* cnt = s.top_cnt;
        const u64* mass = s.top_mass;
        if (level > 0) {
            for (int b = threadIdx.x; b < BINS; b += blockDim.x) {
                s.cnt[b] = 0;
                s.mass[b] = 0;
            }
            __syncthreads();
            for (int i = threadIdx.x; i < V; i += blockDim.x) {
                const float v = x[i];
                if (v != v) continue;
                const u32 k = order_key(v);
                if ((k >> (shift + width)) != prefix) continue;
                const u32 b = (k >> shift) & ((1u << width) - 1u);
                atomicAdd(&s.cnt[b], 1u);
                atomicAdd(&s.mass[b], fixed(weight(v, mx)));
            }
            __syncthreads();
            cnt = s.cnt;
            mass = s.mass;
        }
        if (threadIdx.x < 32)
            find_bin(cnt, mass, 1 << width, above, mass_above, tc, tm, &s.pick);
        __syncthreads();
        const u32 b = s.pick.bin;
        above = s.pick.above;
        mass_above = s.pick.mass_above;
        ties = cnt[b];
        total = mass[b];
        __syncthreads();
        prefix = (prefix << width) | b;
    }
    Cut c;
    c.key = prefix;
    c.above = above;
    c.mass_above = mass_above;
    c.ties = ties;
    c.each = ties ? total / ties : 0;
    u32 q = ties;
    const u32 room = tc > above ? tc - above : 1u;
    if (room < q) q = room;
    if (tm != ALL_MASS) {
        if (tm <= mass_above) {
            q = 1;
        } else if (c.each > 0) {
            const u64 need = (tm - mass_above + c.each - 1) / c.each;
            if (need < q) q = (u32)need;
        }
    }
    c.q = q < 1 ? 1 : q;
    return c;
}

// The id of the q-th (1-based, by id) element of x whose key is `key`.
__device__ u32 nth_tie(const float* x, int V, u32 key, u32 q, u32 ties, Shared& s) {
    if (threadIdx.x == 0) s.found = NO_TOKEN;
    __syncthreads();
    if (ties == 1) {
        for (int i = threadIdx.x; i < V; i += blockDim.x) {
            const float v = x[i];
            if (v == v && order_key(v) == key) s.found = (u32)i;
        }
        __syncthreads();
        return s.found;
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int warps = blockDim.x >> 5;
    u32 seen = 0;  // ties before this chunk (the same in every thread)
    for (int base = 0; base < V; base += blockDim.x) {
        const int i = base + threadIdx.x;
        const float v = i < V ? x[i] : 0.f;
        const bool hit = i < V && v == v && order_key(v) == key;
        const u32 bal = __ballot_sync(0xffffffffu, hit);
        if (lane == 0) s.part32[warp] = __popc(bal);
        __syncthreads();
        u32 before = seen;
        for (int w = 0; w < warp; ++w) before += s.part32[w];
        if (hit && before + __popc(bal & ((1u << lane) - 1)) + 1 == q) s.found = (u32)i;
        u32 chunk = 0;
        for (int w = 0; w < warps; ++w) chunk += s.part32[w];
        seen += chunk;
        __syncthreads();
        if (s.found != NO_TOKEN || seen >= q) break;
    }
    __syncthreads();
    return s.found;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_rows(const float* __restrict__ logits, float* __restrict__ work,
                const u32* __restrict__ meta, u32* __restrict__ ids, int V) {
    __shared__ Shared s;
    const u32 e = blockIdx.x;
    const u32* me = meta + (u64)e * ENTRY_WORDS;
    const u32 row = me[0];
    const bool draws = me[1] != 0;
    const float temp = __uint_as_float(me[2]);
    const u32 top_k = me[3];
    const float top_p = __uint_as_float(me[4]);
    const float min_p = __uint_as_float(me[5]);
    const float r = __uint_as_float(me[6]);
    const u32 edits = me[7], n_edits = me[8];
    const float rp = __uint_as_float(me[9]);
    const float* src = logits + (u64)row * V;
    if (!draws && n_edits == 0) {
        // Plain greedy: the logits as they are.
        const u32 best = block_argmax(src, V, s.partf, s.part32);
        if (threadIdx.x == 0) ids[e] = (src[0] != src[0] || best == NO_TOKEN) ? 0u : best;
        return;
    }
    // The row, edited, divided by the temperature when it draws (the host's
    // (l + edits) / T), in work.
    float* x = work + (u64)e * V;
    const float t = draws ? temp : 1.f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) x[i] = draws ? src[i] / t : src[i];
    __syncthreads();
    for (u32 j = threadIdx.x; j < n_edits; j += blockDim.x) {
        const u32* ed = meta + edits + (u64)j * EDIT_WORDS;
        float v = src[ed[0]];
        for (u32 k = 0; k < ed[2]; ++k) v += __uint_as_float(meta[ed[1] + k]);
        if (ed[3] & 1u) v = v > 0.f ? v / rp : v * rp;
        if (ed[3] & 2u) v -= __uint_as_float(ed[4]);
        x[ed[0]] = draws ? v / t : v;
    }
    __syncthreads();
    if (!draws) {
        const u32 best = block_argmax(x, V, s.partf, s.part32);
        if (threadIdx.x == 0) ids[e] = (x[0] != x[0] || best == NO_TOKEN) ? 0u : best;
        return;
    }
    // The largest key and the candidates (non-NaN).
    u32 kmax = 0;
    u64 nn = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float v = x[i];
        if (v == v) {
            kmax = kmax > order_key(v) ? kmax : order_key(v);
            nn++;
        }
    }
    kmax = block_reduce<true>(kmax, s.part32);
    const u32 cands = (u32)block_reduce<false>(nn, s.part64);
    const float mx = key_value(kmax);
    if (cands == 0 || mx == -INFINITY) {
        if (threadIdx.x == 0) ids[e] = NO_TOKEN;
        return;
    }
    // The first level's histogram (shared by every descent) and min-p's
    // count of weights at least min_p.
    for (int b = threadIdx.x; b < TOP_BINS; b += blockDim.x) {
        s.top_cnt[b] = 0;
        s.top_mass[b] = 0;
    }
    __syncthreads();
    u64 nm = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float v = x[i];
        if (v != v) continue;
        const float w = weight(v, mx);
        const u32 b = order_key(v) >> 21;
        atomicAdd(&s.top_cnt[b], 1u);
        atomicAdd(&s.top_mass[b], fixed(w));
        nm += w >= min_p;
    }
    __syncthreads();
    const u32 n_minp = (u32)block_reduce<false>(nm, s.part64);
    u64 part = 0;
    for (int b = threadIdx.x; b < TOP_BINS; b += blockDim.x) part += s.top_mass[b];
    const u64 all = block_reduce<false>(part, s.part64);
    // top-k: the mass of the first k candidates.
    const u32 k = (top_k == 0 || top_k >= cands) ? cands : top_k;
    u64 sk = all;
    if (k < cands) sk = cut_mass(descend(x, V, mx, s, k, ALL_MASS));
    // top-p within the first k, then min-p: the kept count and mass.
    u32 cap = k;
    if (min_p > 0.f) {
        const u32 m = n_minp < 1 ? 1 : n_minp;
        if (m < cap) cap = m;
    }
    u32 n = cap;
    u64 kept = sk;
    if (top_p < 1.f || cap < k) {
        const u64 tp = top_p < 1.f ? (u64)ceil((double)top_p * (double)sk) : ALL_MASS;
        const Cut c = descend(x, V, mx, s, cap, tp);
        n = cut_count(c);
        kept = cut_mass(c);
    }
    // The draw: the first candidate whose running mass reaches r·kept.
    const u64 target = (u64)ceil((double)r * (double)kept);
    const Cut c = descend(x, V, mx, s, n, target);
    const u32 id = nth_tie(x, V, c.key, c.q, c.ties, s);
    if (threadIdx.x == 0) ids[e] = id;
}
