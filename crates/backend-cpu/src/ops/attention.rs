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
//! Strategy, by a span's number of query rows:
//! * few (decode): one task per (query row, head) over every such span of
//!   the batch; each key and value row is read from its slot (f16 widened
//!   in a scratch row), a max-subtracted softmax, a weighted sum;
//! * many (a prefill chunk): the span's visible keys and values are
//!   gathered once into contiguous f32 rows, then one task per (head,
//!   block of [`QBLOCK`] query rows): the block's scores against every key
//!   any of its rows sees are one GEMM (`S = scale · Q·Kᵀ`, the `gemm`
//!   crate's blocked SIMD kernels), each row's causal/window range gets a
//!   max-subtracted softmax and the rest is zeroed, then `O = P·V` is a
//!   second GEMM.

use mm_core::{Error, KvStorage, KvStore, PagedBatch, PagedParams, Result, SeqSpan, Tensor};

use super::matmul::dot;

/// One sequence's attention over contiguous keys (the prefill path, after
/// gathering): query row `i` at position `pos0 + i`.
#[derive(Clone, Copy, Debug)]
struct Span {
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    pos0: usize,
    scale: f32,
    window: Option<usize>,
}

fn check(q: &Tensor, k: &KvStore, v: &KvStore, b: &PagedBatch, p: &PagedParams) -> Result<usize> {
    let (n, qw) = q.dims2()?;
    let bad = |why: &str| {
        Err(Error::Invalid(format!(
            "paged attention: {why} (q {:?}, k {}×{}, v {}×{}, {p:?})",
            q.shape(),
            k.slots(),
            k.width(),
            v.slots(),
            v.width()
        )))
    };
    if p.n_kv_heads == 0 || p.n_heads % p.n_kv_heads != 0 {
        return bad("query heads must be a multiple of kv heads");
    }
    if qw != p.n_heads * p.head_dim
        || k.width() != p.n_kv_heads * p.head_dim
        || (v.slots(), v.width(), v.dtype()) != (k.slots(), k.width(), k.dtype())
    {
        return bad("widths do not match heads × head_dim");
    }
    b.validate(n, k.slots())?;
    Ok(n)
}

/// Query rows per task of the blocked (prefill) path.
pub const QBLOCK: usize = 32;
/// Query rows of a span from which the blocked path is used.
pub const BLOCKED_MIN_ROWS: usize = 8;

/// `d` values of `store` at `slot`, column `off`, as f32: the stored slice
/// itself for an f32 store, else widened into `buf`.
#[inline]
fn row<'a>(store: &'a KvStore, slot: usize, off: usize, buf: &'a mut [f32]) -> &'a [f32] {
    let (w, d) = (store.width(), buf.len());
    match &store.storage {
        KvStorage::F32(v) => &v[slot * w + off..][..d],
        KvStorage::F16(v) => {
            use half::slice::HalfFloatSliceExt;
            v[slot * w + off..][..d].convert_to_f32_slice(buf);
            buf
        }
        KvStorage::Device(_) => unreachable!("host stores are checked by paged_attention"),
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
    for st in [k, v] {
        if let KvStorage::Device(b) = &st.storage {
            return Err(Error::Invalid(format!(
                "paged attention on the CPU given a KV store on {}",
                b.backend()
            )));
        }
    }
    let qs = q.as_slice()?;
    let (h, d, group) = (p.n_heads, p.head_dim, p.n_heads / p.n_kv_heads);
    let mut out = vec![0.0f32; n * h * d];
    // Row → its span, for the decode path.
    let mut span_of = vec![0u32; n];
    for (i, s) in batch.seqs.iter().enumerate() {
        span_of[s.q_start..s.q_start + s.q_len].fill(i as u32);
    }
    crate::pool::for_each_chunk_mut(&mut out, d, |idx, o| {
        let (r, head) = (idx / h, idx % h);
        let s = &batch.seqs[span_of[r] as usize];
        if s.q_len >= BLOCKED_MIN_ROWS {
            return;
        }
        let kvh = head / group;
        let qrow = &qs[r * h * d + head * d..][..d];
        let len = s.kv_len - s.q_len + (r - s.q_start) + 1;
        let start = p.window.map_or(0, |w| len.saturating_sub(w));
        let mut buf = vec![0.0f32; d];
        let mut scores = Vec::with_capacity(len - start);
        let mut mx = f32::NEG_INFINITY;
        for t in start..len {
            let kr = row(k, batch.slot(s, t), kvh * d, &mut buf);
            let sc = dot(qrow, kr) * p.scale;
            mx = mx.max(sc);
            scores.push(sc);
        }
        let inv = 1.0 / super::vmath::exp_sub_sum(&mut scores, mx);
        o.fill(0.0);
        for (t, &w) in (start..len).zip(scores.iter()) {
            let vr = row(v, batch.slot(s, t), kvh * d, &mut buf);
            let w = w * inv;
            o.iter_mut().zip(vr).for_each(|(o, v)| *o += w * v);
        }
    });
    for s in batch.seqs.iter().filter(|s| s.q_len >= BLOCKED_MIN_ROWS) {
        prefill_span(qs, k, v, batch, s, p, &mut out);
    }
    Tensor::from_vec(vec![n, h * d], out)
}

/// The blocked path for one span: gathers its visible keys and values into
/// contiguous f32 rows, then [`blocked`] into its output rows.
fn prefill_span(
    qs: &[f32],
    k: &KvStore,
    v: &KvStore,
    batch: &PagedBatch,
    s: &SeqSpan,
    p: &PagedParams,
    out: &mut [f32],
) {
    let (h, kw) = (p.n_heads * p.head_dim, k.width());
    let pos0 = s.kv_len - s.q_len;
    // Keys before the first row's window are never seen.
    let lo = p.window.map_or(0, |w| (pos0 + 1).saturating_sub(w));
    let keys = s.kv_len - lo;
    let mut kg = vec![0.0f32; keys * kw];
    let mut vg = vec![0.0f32; keys * kw];
    for (store, g) in [(k, &mut kg), (v, &mut vg)] {
        crate::pool::for_each_chunk_mut(g, kw, |t, dst| {
            let mut buf = vec![0.0f32; kw];
            dst.copy_from_slice(row(store, batch.slot(s, lo + t), 0, &mut buf));
        });
    }
    let span = Span {
        n_heads: p.n_heads,
        n_kv_heads: p.n_kv_heads,
        head_dim: p.head_dim,
        pos0: pos0 - lo,
        scale: p.scale,
        window: p.window,
    };
    let q = &qs[s.q_start * h..(s.q_start + s.q_len) * h];
    let o = blocked(q, &kg, &vg, s.q_len, &span);
    out[s.q_start * h..(s.q_start + s.q_len) * h].copy_from_slice(&o);
}

/// The first key row query row `i` sees, and one past its last.
fn key_range(i: usize, p: &Span) -> (usize, usize) {
    let len = p.pos0 + i + 1;
    (p.window.map_or(0, |w| len.saturating_sub(w)), len)
}

/// The prefill path (module docs): tasks over (head, query block), each two
/// GEMMs around a masked softmax; results scattered into `[n, h·d]`.
fn blocked(qs: &[f32], ks: &[f32], vs: &[f32], n: usize, p: &Span) -> Vec<f32> {
    let (h, d, group) = (p.n_heads, p.head_dim, p.n_heads / p.n_kv_heads);
    let kw = p.n_kv_heads * d;
    let blocks = n.div_ceil(QBLOCK);
    // One slot per task, filled by that task.
    let mut tiles: Vec<(usize, usize, Vec<f32>)> = vec![(0, 0, Vec::new()); h * blocks];
    crate::pool::for_each_chunk_mut(&mut tiles, 1, |t, slot| {
        let (head, b) = (t / blocks, t % blocks);
        let kvh = head / group;
        let (i0, i1) = (b * QBLOCK, ((b + 1) * QBLOCK).min(n));
        let rows = i1 - i0;
        let lo = key_range(i0, p).0;
        let hi = key_range(i1 - 1, p).1;
        let keys = hi - lo;
        let mut s = vec![0.0f32; rows * keys];
        let mut o = vec![0.0f32; rows * d];
        // SAFETY (both calls): every pointer, dimension and stride
        // describes memory inside the live slices: Q rows i0..i1 of head
        // `head` (row stride h·d), K/V rows lo..hi of kv head `kvh` (row
        // stride kw; hi ≤ kv_len ≤ cache rows, checked), `s` [rows, keys]
        // and `o` [rows, d], both row-major and exclusively owned.
        unsafe {
            gemm::gemm(
                rows,
                keys,
                d,
                s.as_mut_ptr(),
                1,
                keys as isize,
                false,
                qs.as_ptr().add(i0 * h * d + head * d),
                1,
                (h * d) as isize,
                ks.as_ptr().add(lo * kw + kvh * d),
                kw as isize,
                1,
                0.0,
                p.scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        for (r, row) in s.chunks_mut(keys).enumerate() {
            let (a, z) = key_range(i0 + r, p);
            let (a, z) = (a - lo, z - lo);
            let mx = row[a..z].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let inv = 1.0 / super::vmath::exp_sub_sum(&mut row[a..z], mx);
            row[a..z].iter_mut().for_each(|x| *x *= inv);
            row[..a].fill(0.0);
            row[z..].fill(0.0);
        }
        unsafe {
            gemm::gemm(
                rows,
                d,
                keys,
                o.as_mut_ptr(),
                1,
                d as isize,
                false,
                s.as_ptr(),
                1,
                keys as isize,
                vs.as_ptr().add(lo * kw + kvh * d),
                1,
                kw as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        slot[0] = (head, i0, o);
    });
    let mut out = vec![0.0f32; n * h * d];
    for (head, i0, o) in tiles {
        for (r, orow) in o.chunks_exact(d).enumerate() {
            out[(i0 + r) * h * d + head * d..][..d].copy_from_slice(orow);
        }
    }
    out
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
