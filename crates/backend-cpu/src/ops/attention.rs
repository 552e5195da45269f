//! Causal grouped-query attention over a KV cache.
//!
//! Layout: `q[n, h*d]`, caches `k`/`v[cap, hkv*d]` with the first `kv_len`
//! rows valid; query row i sits at position `pos0 + i` and sees keys
//! `0..=pos0+i` (only the last `window` of them with a sliding window).
//! Query head `h` reads kv head `h / (h_q / h_kv)`.
//! Strategy: one task per (query row, head), scores in a scratch vector,
//! a max-subtracted softmax, then a weighted sum of value rows.

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

/// Fast CPU attention.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, p: &AttentionParams) -> Result<Tensor> {
    let n = check(q, k, v, p)?;
    let (qs, ks, vs) = (q.as_slice()?, k.as_slice()?, v.as_slice()?);
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
        let mut sum = 0.0f32;
        for s in scores.iter_mut() {
            *s = (*s - mx).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        o.fill(0.0);
        for (t, &w) in (start..len).zip(scores.iter()) {
            let vrow = &vs[t * kw + kvh * d..][..d];
            let w = w * inv;
            o.iter_mut().zip(vrow).for_each(|(o, v)| *o += w * v);
        }
    });
    Tensor::from_vec(vec![n, h * d], out)
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
