//! Forward and backward of the decoder block's operations in f32 on the
//! CPU, for block-wise tuning (`tune::block`).
//!
//! Layout: every activation is row-major `[tokens, width]`; weights are
//! `[out, in]` as stored (`y = x·Wᵀ`). Products go through the `gemm`
//! crate (blocked SIMD SGEMM, threaded with rayon); attention keeps its
//! softmax probabilities `[heads, T, T]` for the backward pass (9.4 MB for
//! 9 heads of 512 tokens), heads in parallel per KV head.
//!
//! Each operation's semantics are those of the inference kernels
//! (`mm_backend_cpu::ops`): RMSNorm `x·rsqrt(mean(x²)+eps)·g`, rotate-half
//! RoPE with f32 angles, causal attention over the last `window` keys,
//! SwiGLU `silu(g)·u`. `block.rs` checks the whole block against the model.

use rayon::prelude::*;

/// A strided operand of [`gemm`]: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A row-major `[rows, cols]` matrix.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn t(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: cols,
        }
    }
}

/// `out[m, n] (+)= a[m, k]·b[k, n]`, `out` with row stride `out_rs`;
/// multi-threaded when `par`.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    out: &mut [f32],
    out_rs: usize,
    a: View,
    b: View,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    par: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |v: &View, r: usize, c: usize| (r - 1) * v.rs + (c - 1) * v.cs;
    assert!(out.len() > (m - 1) * out_rs + n - 1);
    assert!(k == 0 || (a.data.len() > last(&a, m, k) && b.data.len() > last(&b, k, n)));
    // SAFETY: every index the product touches is within the slices
    // (checked above); `out` does not alias the inputs (borrow rules).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            out_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            if par {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            },
        );
    }
}

/// `y[t, out] = x[t, in]·Wᵀ (+ bias)`.
pub fn linear(x: &[f32], w: &[f32], bias: Option<&[f32]>, t: usize, out: usize) -> Vec<f32> {
    let inp = w.len() / out;
    let mut y = vec![0f32; t * out];
    if let Some(b) = bias {
        y.chunks_exact_mut(out).for_each(|r| r.copy_from_slice(b));
    }
    gemm(
        &mut y,
        out,
        View::rows(x, inp),
        View::t(w, inp),
        (t, out, inp),
        bias.is_some(),
        true,
    );
    y
}

/// `∂L/∂W = dyᵀ·x` (`[out, in]`) of [`linear`].
pub fn linear_dw(dy: &[f32], x: &[f32], t: usize, out: usize) -> Vec<f32> {
    let inp = x.len() / t;
    let mut dw = vec![0f32; out * inp];
    gemm(
        &mut dw,
        inp,
        View::t(dy, out),
        View::rows(x, inp),
        (out, inp, t),
        false,
        true,
    );
    dw
}

/// `∂L/∂x = dy·W` (`[t, in]`) of [`linear`].
pub fn linear_dx(dy: &[f32], w: &[f32], t: usize, out: usize) -> Vec<f32> {
    let inp = w.len() / out;
    let mut dx = vec![0f32; t * inp];
    gemm(
        &mut dx,
        inp,
        View::rows(dy, out),
        View::rows(w, inp),
        (t, inp, out),
        false,
        true,
    );
    dx
}

/// RMSNorm of every `dim`-wide row; returns the output and each row's
/// `rsqrt(mean(x²)+eps)`.
pub fn rms_norm(x: &[f32], g: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let dim = g.len();
    let mut y = vec![0f32; x.len()];
    let mut inv = vec![0f32; x.len() / dim];
    for ((y, x), r) in y
        .chunks_exact_mut(dim)
        .zip(x.chunks_exact(dim))
        .zip(&mut inv)
    {
        let ss = x.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        *r = 1.0 / (ss + eps).sqrt();
        for ((y, x), g) in y.iter_mut().zip(x).zip(g) {
            *y = x * *r * g;
        }
    }
    (y, inv)
}

/// `∂L/∂x` of [`rms_norm`]: `r·g⊙dy − x·r³/dim·Σ(g⊙dy⊙x)` per row.
pub fn rms_norm_dx(dy: &[f32], x: &[f32], g: &[f32], inv: &[f32]) -> Vec<f32> {
    let dim = g.len();
    let mut dx = vec![0f32; x.len()];
    for (((dx, dy), x), &r) in dx
        .chunks_exact_mut(dim)
        .zip(dy.chunks_exact(dim))
        .zip(x.chunks_exact(dim))
        .zip(inv)
    {
        let dot: f32 = dy.iter().zip(g).zip(x).map(|((d, g), x)| d * g * x).sum();
        let c = r * r * r / dim as f32 * dot;
        for (((o, d), g), x) in dx.iter_mut().zip(dy).zip(g).zip(x) {
            *o = r * g * d - x * c;
        }
    }
    dx
}

/// Rotate-half RoPE in place on `[t, heads·head_dim]` rows at `positions`;
/// `inverse` rotates back (the backward pass of an orthogonal map).
pub fn rope(x: &mut [f32], head_dim: usize, positions: &[u32], inv_freq: &[f32], inverse: bool) {
    let half = head_dim / 2;
    let width = x.len() / positions.len();
    for (row, &p) in x.chunks_exact_mut(width).zip(positions) {
        let cs: Vec<(f32, f32)> = inv_freq
            .iter()
            .map(|&f| {
                let a = p as f32 * f;
                (a.cos(), if inverse { -a.sin() } else { a.sin() })
            })
            .collect();
        for h in row.chunks_exact_mut(head_dim) {
            let (lo, hi) = h.split_at_mut(half);
            for ((a, b), &(c, s)) in lo.iter_mut().zip(hi.iter_mut()).zip(&cs) {
                let (x1, x2) = (*a, *b);
                *a = x1 * c - x2 * s;
                *b = x2 * c + x1 * s;
            }
        }
    }
}

/// Attention geometry.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub n: usize,
    pub kv: usize,
    pub dim: usize,
    pub window: Option<usize>,
}

/// Causal attention of `q [t, n·dim]` over `k, v [t, kv·dim]` (query head
/// `h` reads KV head `h / (n/kv)`); returns the output `[t, n·dim]` and the
/// probabilities `[n, t, t]` (zero outside the causal window).
pub fn attention(q: &[f32], k: &[f32], v: &[f32], t: usize, hd: Heads) -> (Vec<f32>, Vec<f32>) {
    let (qw, kw, d) = (hd.n * hd.dim, hd.kv * hd.dim, hd.dim);
    let scale = 1.0 / (d as f32).sqrt();
    let mut probs = vec![0f32; hd.n * t * t];
    probs
        .par_chunks_exact_mut(t * t)
        .enumerate()
        .for_each(|(h, p)| {
            let g = h / (hd.n / hd.kv);
            let qh = View {
                data: &q[h * d..],
                rs: qw,
                cs: 1,
            };
            let kt = View {
                data: &k[g * d..],
                rs: 1,
                cs: kw,
            };
            gemm(p, t, qh, kt, (t, t, d), false, false);
            for (i, row) in p.chunks_exact_mut(t).enumerate() {
                let start = hd.window.map_or(0, |w| (i + 1).saturating_sub(w));
                let live = &mut row[start..=i];
                let max = live.iter().fold(f32::MIN, |m, &s| m.max(s * scale));
                let mut sum = 0f32;
                for s in live.iter_mut() {
                    *s = (*s * scale - max).exp();
                    sum += *s;
                }
                live.iter_mut().for_each(|s| *s /= sum);
                row[..start].fill(0.0);
                row[i + 1..].fill(0.0);
            }
        });
    let mut out = vec![0f32; t * qw];
    // Heads write disjoint column ranges of `out`: one output per head,
    // gathered after.
    let per_head: Vec<Vec<f32>> = (0..hd.n)
        .into_par_iter()
        .map(|h| {
            let g = h / (hd.n / hd.kv);
            let mut o = vec![0f32; t * d];
            let vh = View {
                data: &v[g * d..],
                rs: kw,
                cs: 1,
            };
            gemm(
                &mut o,
                d,
                View::rows(&probs[h * t * t..(h + 1) * t * t], t),
                vh,
                (t, d, t),
                false,
                false,
            );
            o
        })
        .collect();
    for (h, o) in per_head.iter().enumerate() {
        for (dst, src) in out.chunks_exact_mut(qw).zip(o.chunks_exact(d)) {
            dst[h * d..(h + 1) * d].copy_from_slice(src);
        }
    }
    (out, probs)
}

/// Gradients `(dq, dk, dv)` of [`attention`] from the output's `da`.
pub fn attention_backward(
    da: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    t: usize,
    hd: Heads,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (qw, kw, d) = (hd.n * hd.dim, hd.kv * hd.dim, hd.dim);
    let scale = 1.0 / (d as f32).sqrt();
    let group = hd.n / hd.kv;
    // Per KV head: its query heads' dq blocks and its own dk, dv `[t, d]`.
    type KvGrads = (Vec<Vec<f32>>, Vec<f32>, Vec<f32>);
    let parts: Vec<KvGrads> = (0..hd.kv)
        .into_par_iter()
        .map(|g| {
            let (mut dk, mut dv) = (vec![0f32; t * d], vec![0f32; t * d]);
            let kg = View {
                data: &k[g * d..],
                rs: kw,
                cs: 1,
            };
            let vt = View {
                data: &v[g * d..],
                rs: 1,
                cs: kw,
            };
            let mut dqs = Vec::with_capacity(group);
            let mut ds = vec![0f32; t * t];
            for h in g * group..(g + 1) * group {
                let p = &probs[h * t * t..(h + 1) * t * t];
                let dah = View {
                    data: &da[h * d..],
                    rs: qw,
                    cs: 1,
                };
                // dv += Pᵀ·da_h
                gemm(&mut dv, d, View::t(p, t), dah, (t, d, t), true, false);
                // dP = da_h·vᵀ, then dS = P⊙(dP − Σ_j dP·P), scaled.
                gemm(&mut ds, t, dah, vt, (t, t, d), false, false);
                for (row, prow) in ds.chunks_exact_mut(t).zip(p.chunks_exact(t)) {
                    let dot: f32 = row.iter().zip(prow).map(|(a, b)| a * b).sum();
                    for (s, &pp) in row.iter_mut().zip(prow) {
                        *s = pp * (*s - dot) * scale;
                    }
                }
                let mut dq = vec![0f32; t * d];
                gemm(&mut dq, d, View::rows(&ds, t), kg, (t, d, t), false, false);
                let qh = View {
                    data: &q[h * d..],
                    rs: qw,
                    cs: 1,
                };
                gemm(&mut dk, d, View::t(&ds, t), qh, (t, d, t), true, false);
                dqs.push(dq);
            }
            (dqs, dk, dv)
        })
        .collect();
    let mut dq = vec![0f32; t * qw];
    let mut dk = vec![0f32; t * kw];
    let mut dv = vec![0f32; t * kw];
    for (g, (dqs, dkg, dvg)) in parts.iter().enumerate() {
        for (j, dqh) in dqs.iter().enumerate() {
            let h = g * group + j;
            for (dst, src) in dq.chunks_exact_mut(qw).zip(dqh.chunks_exact(d)) {
                dst[h * d..(h + 1) * d].copy_from_slice(src);
            }
        }
        for (dst, src) in dk.chunks_exact_mut(kw).zip(dkg.chunks_exact(d)) {
            dst[g * d..(g + 1) * d].copy_from_slice(src);
        }
        for (dst, src) in dv.chunks_exact_mut(kw).zip(dvg.chunks_exact(d)) {
            dst[g * d..(g + 1) * d].copy_from_slice(src);
        }
    }
    (dq, dk, dv)
}

/// `silu(g)·u` elementwise.
pub fn silu_mul(g: &[f32], u: &[f32]) -> Vec<f32> {
    g.iter()
        .zip(u)
        .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
        .collect()
}

/// `(∂L/∂g, ∂L/∂u)` of [`silu_mul`] from the output's `dy`.
pub fn silu_mul_backward(dy: &[f32], g: &[f32], u: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut dg = vec![0f32; g.len()];
    let mut du = vec![0f32; g.len()];
    for ((((dg, du), &dy), &g), &u) in dg.iter_mut().zip(&mut du).zip(dy).zip(g).zip(u) {
        let s = 1.0 / (1.0 + (-g).exp());
        *du = dy * g * s;
        *dg = dy * u * s * (1.0 + g * (1.0 - s));
    }
    (dg, du)
}
