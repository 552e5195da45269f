//! The routed experts of a MoE layer (`Backend::moe_experts`):
//! `y[t] = Σ_j w[t,j] · down_e(silu(gate_e(x_t)) · up_e(x_t))`, `e = ids[t,j]`.
//!
//! Layout: `x[n, hidden]` f32 rows; each expert's `gate`/`up` `[inter,
//! hidden]` and `down` `[hidden, inter]` in any stored format; the route
//! holds `top_k` (expert id, weight) pairs per token.
//!
//! Strategy: the `n·top_k` picks are grouped by expert (a counting sort,
//! tokens in order within an expert), then
//! 1. gate and up: for every expert some token chose, in parallel, its
//!    rows are gathered once into `[n_e, hidden]` and multiplied by its gate
//!    and up weights together (`rayon::join`), then `silu(g) · u`;
//! 2. down: every active expert's `[n_e, inter]` by its down weight, in
//!    parallel;
//! 3. each token sums its `top_k` outputs times their weights in slot order;
//! 4. a shared expert, if any, runs over every row as its own SwiGLU and is
//!    added last.
//!
//! The per-expert products go through the backend's own matmul of a row
//! batch with its row kinds (the `matmul` passed in: every weight format,
//! the same kernels and precisions as any linear layer, no kernel of its
//! own), so a token's result depends only on the token, never on which
//! other tokens share its experts. The loops over experts run on rayon; the
//! matmuls' own loops over output tiles nest inside them (the pool hands
//! nested loops to rayon), so experts × output tiles share the threads —
//! one pass per projection instead of a call per expert from the model.

use mm_core::moe::{moe_dims, MoeExperts, MoeRoute};
use mm_core::{Error, Result, RowKind, Tensor, WeightData};
use rayon::prelude::*;

/// `x[rows, k] · wᵀ` of a batch of rows with their kinds.
pub type ExpertMatmul<'a> = dyn Fn(&Tensor, &WeightData, &[RowKind]) -> Result<Tensor> + Sync + 'a;

/// The grouped expert op over `matmul` (see the module comment).
pub fn moe_experts(
    x: &Tensor,
    experts: &MoeExperts<'_>,
    route: &MoeRoute<'_>,
    kinds: &[RowKind],
    matmul: &ExpertMatmul<'_>,
) -> Result<Tensor> {
    let (n, hidden, _) = moe_dims(x, experts, route)?;
    if kinds.len() != n {
        return Err(Error::Invalid(format!(
            "moe_experts: {} row kinds for {n} rows",
            kinds.len()
        )));
    }
    let k = route.top_k;
    // picks[e]: the (token·k + slot) picks of expert e, token order.
    let mut picks: Vec<Vec<usize>> = vec![Vec::new(); experts.gate.len()];
    for (p, &e) in route.ids.iter().enumerate() {
        picks[e as usize].push(p);
    }
    let active: Vec<usize> = (0..picks.len()).filter(|&e| !picks[e].is_empty()).collect();
    let xs = x.as_slice()?;
    let row_kinds = |e: usize| -> Vec<RowKind> { picks[e].iter().map(|&p| kinds[p / k]).collect() };

    let hs: Vec<Tensor> = active
        .par_iter()
        .map(|&e| -> Result<Tensor> {
            let mut rows = mm_core::host_pool::take(picks[e].len() * hidden);
            for &p in &picks[e] {
                let t = p / k;
                rows.extend_from_slice(&xs[t * hidden..(t + 1) * hidden]);
            }
            let xe = Tensor::from_vec(vec![picks[e].len(), hidden], rows)?;
            let ke = row_kinds(e);
            let (g, u) = rayon::join(
                || matmul(&xe, experts.gate[e], &ke),
                || matmul(&xe, experts.up[e], &ke),
            );
            super::activation::silu_mul(&g?, &u?)
        })
        .collect::<Result<_>>()?;
    let ys: Vec<Tensor> = active
        .par_iter()
        .zip(hs)
        .map(|(&e, h)| matmul(&h, experts.down[e], &row_kinds(e)))
        .collect::<Result<_>>()?;

    // where[p]: (index into `ys`, row) of pick p.
    let mut at = vec![(0usize, 0usize); n * k];
    for (a, &e) in active.iter().enumerate() {
        for (r, &p) in picks[e].iter().enumerate() {
            at[p] = (a, r);
        }
    }
    let ys: Vec<&[f32]> = ys.iter().map(|y| y.as_slice()).collect::<Result<_>>()?;
    // 4. the shared expert, as its own SwiGLU over every row.
    let shared = match experts.shared {
        None => None,
        Some([g, u, d]) => {
            let (g, u) = rayon::join(|| matmul(x, g, kinds), || matmul(x, u, kinds));
            Some(matmul(&super::activation::silu_mul(&g?, &u?)?, d, kinds)?)
        }
    };
    let shared = shared.as_ref().map(|s| s.as_slice()).transpose()?;
    let mut out = mm_core::host_pool::zeroed(n * hidden);
    crate::pool::for_each_chunk_mut(&mut out, hidden, |t, o| {
        for j in 0..k {
            let p = t * k + j;
            let (a, r) = at[p];
            let w = route.weights[p];
            let y = &ys[a][r * hidden..(r + 1) * hidden];
            o.iter_mut().zip(y).for_each(|(o, y)| *o += w * y);
        }
        if let Some(s) = shared {
            let s = &s[t * hidden..(t + 1) * hidden];
            o.iter_mut().zip(s).for_each(|(o, s)| *o += s);
        }
    });
    Tensor::from_vec(vec![n, hidden], out)
}

/// Scalar reference: every token's experts one by one in f64 over the
/// dequantized weights (`gate[e]`, `up[e]` `[inter·hidden]`, `down[e]`
/// `[hidden·inter]`, row-major), summed in slot order.
#[allow(clippy::too_many_arguments)]
pub fn moe_experts_ref(
    x: &[f32],
    gate: &[Vec<f32>],
    up: &[Vec<f32>],
    down: &[Vec<f32>],
    ids: &[u32],
    weights: &[f32],
    hidden: usize,
    inter: usize,
    top_k: usize,
) -> Vec<f32> {
    let n = x.len() / hidden;
    let mut out = vec![0f32; n * hidden];
    let dot =
        |w: &[f32], xs: &[f64]| -> f64 { w.iter().zip(xs).map(|(&a, &b)| a as f64 * b).sum() };
    for t in 0..n {
        let xt: Vec<f64> = x[t * hidden..(t + 1) * hidden]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let mut acc = vec![0f64; hidden];
        for j in 0..top_k {
            let e = ids[t * top_k + j] as usize;
            let h: Vec<f64> = (0..inter)
                .map(|i| {
                    let g = dot(&gate[e][i * hidden..(i + 1) * hidden], &xt);
                    let u = dot(&up[e][i * hidden..(i + 1) * hidden], &xt);
                    g / (1.0 + (-g).exp()) * u
                })
                .collect();
            let w = weights[t * top_k + j] as f64;
            for (o, a) in acc.iter_mut().enumerate() {
                *a += w * dot(&down[e][o * inter..(o + 1) * inter], &h);
            }
        }
        for (o, a) in out[t * hidden..(t + 1) * hidden].iter_mut().zip(acc) {
            *o = a as f32;
        }
    }
    out
}

/// Scalar reference of a shared expert: every token's SwiGLU
/// `down(silu(gate·x)·up·x)` in f64 over dequantized weights (`gate`, `up`
/// `[inter·hidden]`, `down` `[hidden·inter]`, row-major).
pub fn swiglu_ref(
    x: &[f32],
    gate: &[f32],
    up: &[f32],
    down: &[f32],
    hidden: usize,
    inter: usize,
) -> Vec<f32> {
    let dot =
        |w: &[f32], xs: &[f64]| -> f64 { w.iter().zip(xs).map(|(&a, &b)| a as f64 * b).sum() };
    x.chunks(hidden)
        .flat_map(|xt| {
            let xt: Vec<f64> = xt.iter().map(|&v| v as f64).collect();
            let h: Vec<f64> = (0..inter)
                .map(|i| {
                    let g = dot(&gate[i * hidden..(i + 1) * hidden], &xt);
                    let u = dot(&up[i * hidden..(i + 1) * hidden], &xt);
                    g / (1.0 + (-g).exp()) * u
                })
                .collect();
            (0..hidden)
                .map(|o| dot(&down[o * inter..(o + 1) * inter], &h) as f32)
                .collect::<Vec<_>>()
        })
        .collect()
}
