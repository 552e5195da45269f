//! Causal grouped-query attention over the paged KV cache, for the
//! flattened batch of a forward step.
//!
//! Layout: `q[rows, h*d]`, the queries of every sequence of the batch one
//! after the other ([`PagedBatch`]); keys/values in [`KvStore`]s of
//! `slots × hkv*d` (f32 or f16), a sequence's key at position `t` in slot
//! `table[t / block_size]·block_size + t % block_size`. Query row `i` of a
//! span sits at position `kv_len − q_len + i` and sees keys `0..=` that
//! position (only the last `window` of them with a sliding window). Query
//! head `h` reads kv head `h / (h_q / h_kv)`.
//!
//! Strategy: one task per (consecutive query rows of a sequence, query
//! heads of one kv head): up to [`VECS`] query vectors, e.g. 2 rows × the
//! 3 query heads of a kv head, every vector the same way, whether it
//! decodes one token or is one of a prompt chunk's rows: scores 1–4 keys
//! at a time (each an FMA chain over the head dimension in SIMD lanes,
//! summed across lanes by one fixed reduction per vector; a key loaded, and
//! widened, once for all the task's vectors), read straight from
//! their slots (f16 widened in registers); a max-subtracted softmax; the
//! value rows weighted and summed in key order, a register block of the
//! head dimension at a time, with no per-row range test over the keys all
//! the task's rows see. A row's output is therefore the
//! same bits whatever else is in the batch and however its prompt was
//! chunked (batch invariance), at the cost of the GEMM-shaped prefill
//! path this replaced (attention is about 13% of a SmolLM2 pp512 profile;
//! 12 vectors a task measured slower than 6: 15–16% of it against 13%).

use mm_core::{Error, KvStorage, KvStore, PagedBatch, PagedParams, Result, Tensor};

use super::matmul::dense::{Elem, Lanes, Portable, Simd, F16, F32};

fn check(q: &Tensor, k: &KvStore, v: &KvStore, b: &PagedBatch, p: &PagedParams) -> Result<usize> {
    for st in [k, v] {
        if let KvStorage::Device(d) = &st.storage {
            return Err(Error::Invalid(format!(
                "paged attention: a KV store on {}, not the host",
                d.backend()
            )));
        }
    }
    mm_core::kv::attention_rows(q, k, v, b, p)
}

/// One task: 1 to [`VECS`] query vectors (rows × heads) of one sequence
/// that share a kv head. Vector `i` reads the keys
/// `slots[ranges[i].0..ranges[i].1]` (byte offset `off` into each slot's
/// row of `kw` values) and writes `d` values at `out[i]`.
struct Task<'a> {
    q: [&'a [f32]; VECS],
    ranges: [(usize, usize); VECS],
    out: [*mut f32; VECS],
    k: *const u8,
    v: *const u8,
    slots: &'a [u32],
    kw: usize,
    off: usize,
    scale: f32,
}

/// A raw pointer shared by the tasks: the stores (read) and the output
/// (disjoint rows written).
#[derive(Clone, Copy)]
struct Ptr<T>(*mut T);
// SAFETY: the stores are only read while `paged_attention` borrows them;
// each output element is written by exactly one task.
unsafe impl<T> Send for Ptr<T> {}
unsafe impl<T> Sync for Ptr<T> {}

impl<T> Ptr<T> {
    /// The pointer (a method, so closures capture the `Sync` wrapper).
    fn get(self) -> *mut T {
        self.0
    }
}

/// Fast CPU paged attention.
pub fn paged_attention(
    q: &Tensor,
    k: &KvStore,
    v: &KvStore,
    batch: &PagedBatch,
    p: &PagedParams,
) -> Result<Tensor> {
    let n = check(q, k, v, batch, p)?;
    let qs = q.as_slice()?;
    let (h, d, group) = (p.n_heads, p.head_dim, p.n_heads / p.n_kv_heads);
    let kw = k.width();
    let ptr = |st: &KvStore| match &st.storage {
        KvStorage::F32(x) => x.as_ptr() as *mut u8,
        KvStorage::F16(x) => x.as_ptr() as *mut u8,
        KvStorage::Device(_) => std::ptr::null_mut(),
    };
    let (kp, vp) = (Ptr(ptr(k)), Ptr(ptr(v)));
    let f16 = matches!(k.storage, KvStorage::F16(_));
    // Per span, the slot of every key position.
    let slots: Vec<Vec<u32>> = batch
        .seqs
        .iter()
        .map(|s| (0..s.kv_len).map(|t| batch.slot(s, t) as u32).collect())
        .collect();
    // Tasks: (span, first row, rows, first head, heads), the heads one kv
    // head's (all of its group, up to VECS), rows × heads ≤ VECS; a kv
    // head's tasks after each other so that the running tasks share its
    // keys and values in L2 (all heads at once would not fit on a long
    // prompt).
    let hpt = group.min(VECS);
    let rpt = (VECS / hpt).max(1);
    let mut tasks = Vec::with_capacity((n.div_ceil(rpt) + batch.seqs.len()) * h.div_ceil(hpt));
    for (si, s) in batch.seqs.iter().enumerate() {
        let mut h0 = 0;
        while h0 < h {
            // Chunks of heads never straddle two kv heads.
            let hc = hpt.min(group - h0 % group);
            for r in (s.q_start..s.q_start + s.q_len).step_by(rpt) {
                let rows = (s.q_start + s.q_len - r).min(rpt);
                tasks.push((si, r, rows, h0, hc));
            }
            h0 += hc;
        }
    }
    let simd = Simd::detect();
    let mut out = mm_core::host_pool::zeroed(n * h * d);
    let op = Ptr(out.as_mut_ptr());
    crate::pool::for_each(tasks.len(), |ti| {
        let (si, r0, rows, h0, hc) = tasks[ti];
        let s = &batch.seqs[si];
        let range = |r: usize| {
            let len = s.kv_len - s.q_len + (r - s.q_start) + 1;
            (p.window.map_or(0, |w| len.saturating_sub(w)), len)
        };
        // Vector i is (row r0 + i / hc, head h0 + i % hc); vectors past
        // rows × hc repeat the last one (computed again, written with the
        // same values by this task alone).
        let count = rows * hc;
        let vec = |i: usize| {
            let i = i.min(count - 1);
            (r0 + i / hc, h0 + i % hc)
        };
        let t = Task {
            q: std::array::from_fn(|i| {
                let (r, hd) = vec(i);
                &qs[(r * h + hd) * d..][..d]
            }),
            ranges: std::array::from_fn(|i| range(vec(i).0)),
            // SAFETY: rows r0..r0+rows of heads h0..h0+hc are inside `out`
            // and belong to this task only.
            out: std::array::from_fn(|i| {
                let (r, hd) = vec(i);
                unsafe { op.get().add((r * h + hd) * d) }
            }),
            k: kp.get(),
            v: vp.get(),
            slots: &slots[si],
            kw,
            off: (h0 / group) * d,
            scale: p.scale,
        };
        attend(simd, f16, count, &t);
    });
    Tensor::from_vec(vec![n, h * d], out)
}

/// Query vectors per task at most (they share every key and value load;
/// `attend` compiles kernels up to this count).
const VECS: usize = 6;

/// Runs [`attend_on`] for `count` (1 to [`VECS`]) query vectors, rounded up
/// to a compiled size (1, 2, 3, 4 or 6), and the store's element type.
fn attend(simd: Simd, f16: bool, count: usize, t: &Task) {
    macro_rules! go {
        ($s:ty, $e:ty) => {
            match count {
                1 => attend_on::<$s, $e, 1, 4, 4>(t),
                2 => attend_on::<$s, $e, 2, 4, 4>(t),
                3 => attend_on::<$s, $e, 3, 2, 2>(t),
                4 => attend_on::<$s, $e, 4, 2, 2>(t),
                _ => attend_on::<$s, $e, 6, 2, 2>(t),
            }
        };
    }
    // SAFETY (every arm): `simd` is available (Simd::detect); the store
    // pointers hold every slot of `t.slots` (checked by `check` and
    // `PagedBatch::validate`); `t.q` and `t.out` hold `d` values a row.
    unsafe {
        match (simd, f16) {
            #[cfg(target_arch = "x86_64")]
            (Simd::Avx2 | Simd::Avx512, false) => x86_avx2::<F32>(count, t),
            #[cfg(target_arch = "x86_64")]
            (Simd::Avx2 | Simd::Avx512, true) => x86_avx2::<F16>(count, t),
            #[cfg(target_arch = "aarch64")]
            (Simd::Neon, false) => go!(super::matmul::dense::aarch64::Neon, F32),
            #[cfg(target_arch = "aarch64")]
            (Simd::Neon, true) => go!(super::matmul::dense::aarch64::Neon, F16),
            (_, false) => go!(Portable, F32),
            (_, true) => go!(Portable, F16),
        }
    }
}

/// AVX2 (also on AVX-512 machines: one attention arithmetic per
/// architecture keeps results identical across them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn x86_avx2<E: Elem>(count: usize, t: &Task) {
    use super::matmul::dense::x86::Avx2;
    match count {
        1 => attend_on::<Avx2, E, 1, 4, 4>(t),
        2 => attend_on::<Avx2, E, 2, 4, 4>(t),
        3 => attend_on::<Avx2, E, 3, 2, 2>(t),
        4 => attend_on::<Avx2, E, 4, 2, 2>(t),
        _ => attend_on::<Avx2, E, 6, 2, 2>(t),
    }
}

/// `R` rows of one head (module docs): `out = softmax(scale·q·Kᵀ)·V`.
/// The rows are computed over the union of their key ranges, `KQ` keys at
/// a time, each key loaded once for all rows, the values `B` registers of
/// the head dimension at a time; a row keeps only its own keys, and every
/// (row, key) score and every output element has the same arithmetic
/// whatever `R`, `KQ` and `B`, so the grouping never changes a result.
///
/// # Safety
/// `S` must be available; `t.k`/`t.v` must hold `E` values at every
/// `(slot·kw + off) + 0..d` for the slots of `t`; `t.out[..R]` must be
/// writable for `d` values.
#[inline(always)]
unsafe fn attend_on<S: Lanes, E: Elem, const R: usize, const KQ: usize, const B: usize>(t: &Task) {
    let d = t.q[0].len();
    let dv = d - d % S::L;
    let q: [*const f32; R] = std::array::from_fn(|r| t.q[r].as_ptr());
    let at = |base: *const u8, slot: u32| base.add((slot as usize * t.kw + t.off) * E::BYTES);
    let lo = (0..R).map(|r| t.ranges[r].0).min().unwrap_or(0);
    let hi = (0..R).map(|r| t.ranges[r].1).max().unwrap_or(0);
    let mut scores: [Vec<f32>; R] =
        std::array::from_fn(|r| vec![0.0f32; t.ranges[r].1 - t.ranges[r].0]);
    // One score: the lane sum (sum4's arithmetic), the tail, the scale.
    let keep = |scores: &mut [Vec<f32>; R], r: usize, key: usize, kr: *const u8, s: f32| {
        let (a, z) = t.ranges[r];
        if key < a || key >= z {
            return;
        }
        let mut s = s;
        for e in dv..d {
            s += E::one(kr.add(e * E::BYTES)) * *q[r].add(e);
        }
        scores[r][key - a] = s * t.scale;
    };
    let mut key = lo;
    while key + KQ <= hi {
        let kr: [*const u8; KQ] = std::array::from_fn(|j| at(t.k, t.slots[key + j]));
        let mut acc = [[S::zero(); KQ]; R];
        let mut e = 0;
        while e < dv {
            let kv: [S::V; KQ] = std::array::from_fn(|j| E::load::<S>(kr[j].add(e * E::BYTES)));
            for (r, a) in acc.iter_mut().enumerate() {
                let qv = S::f32s(q[r].add(e).cast());
                for (a, &k) in a.iter_mut().zip(&kv) {
                    *a = S::fma(k, qv, *a);
                }
            }
            e += S::L;
        }
        reduce::<S, R, KQ>(&acc, |r, j, s| keep(&mut scores, r, key + j, kr[j], s));
        key += KQ;
    }
    while key < hi {
        let kr = at(t.k, t.slots[key]);
        let mut acc = [S::zero(); R];
        let mut e = 0;
        while e < dv {
            let kv = E::load::<S>(kr.add(e * E::BYTES));
            for (r, a) in acc.iter_mut().enumerate() {
                *a = S::fma(kv, S::f32s(q[r].add(e).cast()), *a);
            }
            e += S::L;
        }
        let acc = acc.map(|a| [a]);
        reduce::<S, R, 1>(&acc, |r, _, s| keep(&mut scores, r, key, kr, s));
        key += 1;
    }
    for sc in scores.iter_mut() {
        let mx = sc.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let inv = 1.0 / super::vmath::exp_sub_sum(sc, mx);
        sc.iter_mut().for_each(|w| *w *= inv);
    }
    // Values: per output element, a sum in key order over the row's keys;
    // `B` registers of the head dimension at a time, then one.
    let mut e0 = 0;
    while e0 + B * S::L <= dv {
        values::<S, E, R, B>(t, &scores, lo, hi, e0);
        e0 += B * S::L;
    }
    while e0 < dv {
        values::<S, E, R, 1>(t, &scores, lo, hi, e0);
        e0 += S::L;
    }
    for r in 0..R {
        let (ra, rz) = t.ranges[r];
        for e in dv..d {
            let mut a = 0.0f32;
            for key in ra..rz {
                a += scores[r][key - ra] * E::one(at(t.v, t.slots[key]).add(e * E::BYTES));
            }
            *t.out[r].add(e) = a;
        }
    }
}

/// The lane sums of the `R × KQ` score accumulators, four at a time
/// through [`Lanes::sum4`] (which sums each register by the same tree
/// whatever its neighbours, so any grouping gives the same bits), handed
/// to `put(r, j, sum)`.
#[inline(always)]
unsafe fn reduce<S: Lanes, const R: usize, const KQ: usize>(
    acc: &[[S::V; KQ]; R],
    mut put: impl FnMut(usize, usize, f32),
) {
    let n = R * KQ;
    let at = |i: usize| acc[i.min(n - 1) / KQ][i.min(n - 1) % KQ];
    let mut i = 0;
    while i < n {
        let s4 = S::sum4(at(i), at(i + 1), at(i + 2), at(i + 3));
        for (o, &s) in s4.iter().enumerate().take(n - i) {
            put((i + o) / KQ, (i + o) % KQ, s);
        }
        i += 4;
    }
}

/// `out[r][e0 .. e0 + B·L] = Σ_key w[r][key] · V[key][e0 ..]` for the `R`
/// rows of `t`, keys `lo..hi` in order (each row only its own keys).
///
/// # Safety
/// As [`attend_on`]; `e0 + B·L ≤ d`.
#[inline(always)]
unsafe fn values<S: Lanes, E: Elem, const R: usize, const B: usize>(
    t: &Task,
    scores: &[Vec<f32>; R],
    lo: usize,
    hi: usize,
    e0: usize,
) {
    let mut acc = [[S::zero(); B]; R];
    // Keys every row sees need no per-row test; each row still sums its
    // keys in increasing order.
    let ca = (0..R).map(|r| t.ranges[r].0).max().unwrap_or(0);
    let cz = (0..R).map(|r| t.ranges[r].1).min().unwrap_or(0);
    if ca < cz {
        for key in lo..ca {
            value_step::<S, E, R, B, true>(t, scores, &mut acc, key, e0);
        }
        for key in ca..cz {
            value_step::<S, E, R, B, false>(t, scores, &mut acc, key, e0);
        }
        for key in cz..hi {
            value_step::<S, E, R, B, true>(t, scores, &mut acc, key, e0);
        }
    } else {
        for key in lo..hi {
            value_step::<S, E, R, B, true>(t, scores, &mut acc, key, e0);
        }
    }
    for (r, a) in acc.iter().enumerate() {
        for (i, &a) in a.iter().enumerate() {
            S::store(t.out[r].add(e0 + i * S::L), a);
        }
    }
}

/// Adds value row `key` (from `e0`, `B` registers), weighted, into the
/// accumulators of every row that sees it (`CHECK`: test each row's range;
/// without it every row must see `key`).
///
/// # Safety
/// As [`values`].
#[inline(always)]
unsafe fn value_step<S: Lanes, E: Elem, const R: usize, const B: usize, const CHECK: bool>(
    t: &Task,
    scores: &[Vec<f32>; R],
    acc: &mut [[S::V; B]; R],
    key: usize,
    e0: usize,
) {
    let vr =
        t.v.add((t.slots[key] as usize * t.kw + t.off + e0) * E::BYTES);
    let vv: [S::V; B] = std::array::from_fn(|i| E::load::<S>(vr.add(i * S::L * E::BYTES)));
    for (r, a) in acc.iter_mut().enumerate() {
        let (ra, rz) = t.ranges[r];
        if CHECK && (key < ra || key >= rz) {
            continue;
        }
        let w = S::splat(*scores[r].get_unchecked(key - ra));
        for (a, &v) in a.iter_mut().zip(&vv) {
            *a = S::fma(v, w, *a);
        }
    }
}

/// Scalar reference in f64 over an f32 image of the stores (`k`, `v`:
/// `slots × hkv·d`, the values as stored).
pub fn paged_attention_ref(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    batch: &PagedBatch,
    p: &PagedParams,
) -> Vec<f32> {
    let (h, d) = (p.n_heads, p.head_dim);
    let kw = p.n_kv_heads * d;
    let group = h / p.n_kv_heads;
    let n = batch.rows();
    let mut out = vec![0.0f32; n * h * d];
    for s in &batch.seqs {
        for i in 0..s.q_len {
            let r = s.q_start + i;
            let len = s.kv_len - s.q_len + i + 1;
            let start = p.window.map_or(0, |w| len.saturating_sub(w));
            for head in 0..h {
                let kvh = head / group;
                let at = |t: usize| batch.slot(s, t) * kw + kvh * d;
                let scores: Vec<f64> = (start..len)
                    .map(|t| {
                        (0..d)
                            .map(|e| q[r * h * d + head * d + e] as f64 * k[at(t) + e] as f64)
                            .sum::<f64>()
                            * p.scale as f64
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let sum: f64 = w.iter().sum();
                for e in 0..d {
                    let acc: f64 = (start..len)
                        .map(|t| w[t - start] / sum * v[at(t) + e] as f64)
                        .sum();
                    out[r * h * d + head * d + e] = acc as f32;
                }
            }
        }
    }
    out
}
