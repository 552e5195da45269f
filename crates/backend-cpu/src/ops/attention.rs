//! Causal grouped-query attention over a KV cache.
//!
//! Layout: `q[n, h*d]`, caches `k`/`v[cap, hkv*d]` with the first `kv_len`
//! rows valid; query row i sits at position `pos0 + i` and sees keys
//! `0..=pos0+i` (only the last `window` of them with a sliding window).
//! Query head `h` reads kv head `h / (h_q / h_kv)`.
//!
//! Strategy, by the number of query rows `n`:
//! * few rows (decode): one task per (query row, head), scores in a scratch
//!   vector, a max-subtracted softmax, then a weighted sum of value rows;
//! * many rows (prefill): one task per (head, block of [`QBLOCK`] query
//!   rows). The block's scores against every key any of its rows sees are
//!   one GEMM (`S = scale · Q·Kᵀ`, the `gemm` crate's blocked SIMD kernels,
//!   chosen at run time), then each row's causal/window range gets a
//!   max-subtracted softmax and the rest is zeroed, then `O = P·V` is a
//!   second GEMM. Only the diagonal block computes masked scores it does
//!   not need; memory is `QBLOCK × keys` floats per task.

use mm_core::backend::AttentionParams;
use mm_core::{Error, Result, Tensor};

use super::matmul::dot;

fn check(q: &Tensor, k: &Tensor, v: &Tensor, p: &AttentionParams) -> Result<usize> {
    let (n, qw) = q.dims2()?;
    let (cap, kw) = k.dims2()?;
    let bad = |why: &str| {
        Err(Error::Invalid(format!(
            "attention: {why} (q {:?}, k {:?}, v {:?}, {p:?})",
            q.shape(),
            k.shape(),
            v.shape()
        )))
    };
    if p.n_kv_heads == 0 || p.n_heads % p.n_kv_heads != 0 {
        return bad("query heads must be a multiple of kv heads");
    }
    if qw != p.n_heads * p.head_dim || kw != p.n_kv_heads * p.head_dim || v.shape() != k.shape() {
        return bad("widths do not match heads × head_dim");
    }
    if p.kv_len > cap || p.pos0 + n > p.kv_len {
        return bad("queries reach past the valid cache rows");
    }
    Ok(n)
}

/// Query rows per task of the blocked (prefill) path.
pub const QBLOCK: usize = 32;
/// Query rows from which the blocked path is used.
pub const BLOCKED_MIN_ROWS: usize = 8;

/// Fast CPU attention.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, p: &AttentionParams) -> Result<Tensor> {
    let n = check(q, k, v, p)?;
    let (qs, ks, vs) = (q.as_slice()?, k.as_slice()?, v.as_slice()?);
    if n >= BLOCKED_MIN_ROWS {
        return Tensor::from_vec(vec![n, p.n_heads * p.head_dim], blocked(qs, ks, vs, n, p));
    }
    let (h, d, group) = (p.n_heads, p.head_dim, p.n_heads / p.n_kv_heads);
    let kw = p.n_kv_heads * d;
    let mut out = vec![0.0f32; n * h * d];
    crate::pool::for_each_chunk_mut(&mut out, d, |idx, o| {
        let (i, head) = (idx / h, idx % h);
        let kvh = head / group;
        let qrow = &qs[i * h * d + head * d..][..d];
        let len = p.pos0 + i + 1;
        let start = p.window.map_or(0, |w| len.saturating_sub(w));
        let mut scores = Vec::with_capacity(len - start);
        let mut mx = f32::NEG_INFINITY;
        for t in start..len {
            let s = dot(qrow, &ks[t * kw + kvh * d..][..d]) * p.scale;
            mx = mx.max(s);
            scores.push(s);
        }
        let inv = 1.0 / super::vmath::exp_sub_sum(&mut scores, mx);
        o.fill(0.0);
        for (t, &w) in (start..len).zip(scores.iter()) {
            let vrow = &vs[t * kw + kvh * d..][..d];
            let w = w * inv;
            o.iter_mut().zip(vrow).for_each(|(o, v)| *o += w * v);
        }
    });
    Tensor::from_vec(vec![n, h * d], out)
}

/// The first key row query row `i` sees, and one past its last.
fn key_range(i: usize, p: &AttentionParams) -> (usize, usize) {
    let len = p.pos0 + i + 1;
    (p.window.map_or(0, |w| len.saturating_sub(w)), len)
}

/// The prefill path (module docs): tasks over (head, query block), each two
/// GEMMs around a masked softmax; results scattered into `[n, h·d]`.
fn blocked(qs: &[f32], ks: &[f32], vs: &[f32], n: usize, p: &AttentionParams) -> Vec<f32> {
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

/// Scalar reference in f64.
pub fn attention_ref(q: &[f32], k: &[f32], v: &[f32], n: usize, p: &AttentionParams) -> Vec<f32> {
    let (h, d) = (p.n_heads, p.head_dim);
    let kw = p.n_kv_heads * d;
    let group = h / p.n_kv_heads;
    let mut out = vec![0.0f32; n * h * d];
    for i in 0..n {
        for head in 0..h {
            let kvh = head / group;
            let len = p.pos0 + i + 1;
            let start = p.window.map_or(0, |w| len.saturating_sub(w));
            let scores: Vec<f64> = (start..len)
                .map(|t| {
                    (0..d)
                        .map(|e| {
                            q[i * h * d + head * d + e] as f64 * k[t * kw + kvh * d + e] as f64
                        })
                        .sum::<f64>()
                        * p.scale as f64
                })
                .collect();
            let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
            let sum: f64 = w.iter().sum();
            for e in 0..d {
                let acc: f64 = (start..len)
                    .map(|t| w[t - start] / sum * v[t * kw + kvh * d + e] as f64)
                    .sum();
                out[i * h * d + head * d + e] = acc as f32;
            }
        }
    }
    out
}
