//! The routed experts of a MoE layer (`shaders/moe.wgsl`,
//! `moe_combine.wgsl`), grouped by expert: for each expert some token
//! chose, one dispatch per projection over all of its (token, choice)
//! pairs, reading the expert's own weight in its GPU form (any format,
//! experts of different formats included); then SiLU·mul over every pair
//! and a weighted sum per token in choice order. The shared expert, if
//! any, runs as its own SwiGLU through the dense matmul and is added last,
//! as the CPU backend does. Routes come from the host ([`mm_core::MoeRoute`]).

use std::sync::Arc;

use mm_core::{MoeExperts, MoeRoute, Result, Tensor, WeightData};

use super::{activation, dim, matmul, WG as EW};
use crate::buffer::{alloc, on_gpu, words};
use crate::runtime::{grid, Runtime};
use crate::shader::Variant;
use crate::weight::{all_stored, prepare, template, Stored};

/// Threads per workgroup of the expert matmul.
const WG: u32 = 64;

fn expert_variant(stored: Stored) -> Variant {
    Variant::new("moe", "expert_matmul")
        .with("WG", WG)
        .with("WEIGHT", template(stored))
        .with("X8", matmul::X8)
}

fn combine_variant() -> Variant {
    Variant::new("moe_combine", "moe_combine").with("WG", EW)
}

pub fn variants() -> Vec<Variant> {
    let mut v: Vec<Variant> = all_stored().into_iter().map(expert_variant).collect();
    v.push(combine_variant());
    v
}

/// `y[p] = w_e · x[row(p)]` for the pairs `idx[base..base + count]` of
/// expert weight `w`; rows of x by token (`by_pair` false) or by pair.
#[allow(clippy::too_many_arguments)]
fn expert_matmul(
    rt: &Arc<Runtime>,
    w: &WeightData,
    x: &wgpu::Buffer,
    idx: &wgpu::Buffer,
    (base, count): (usize, usize),
    (k, m, topk): (usize, usize, usize),
    by_pair: bool,
    y: &wgpu::Buffer,
) -> Result<()> {
    let gw = prepare(rt, w)?;
    let kernel = rt.kernel(&expert_variant(gw.stored))?;
    let params = [
        dim(count, "pairs")?,
        dim(base, "pair offset")?,
        dim(k, "columns")?,
        dim(m, "outputs")?,
        dim(gw.kp, "padded columns")?,
        dim(gw.group, "group")?,
        dim(topk, "top-k")?,
        by_pair as u32,
    ];
    let mut bind = vec![(1, x), (2, idx), (3, y)];
    bind.extend(gw.single("expert weight")?.bindings());
    rt.dispatch(
        &kernel,
        &params,
        &bind,
        [
            dim(m.div_ceil(4), "row blocks")?,
            dim(count.div_ceil(4), "pair blocks")?,
            1,
        ],
    )
}

pub fn moe_experts(
    rt: &Arc<Runtime>,
    x: &Tensor,
    experts: &MoeExperts<'_>,
    route: &MoeRoute<'_>,
) -> Result<Tensor> {
    let (n, hidden, inter) = mm_core::moe::moe_dims(x, experts, route)?;
    if n == 0 || hidden == 0 {
        return Ok(Tensor::zeros(vec![n, hidden]));
    }
    let topk = route.top_k;
    let pairs = n * topk;
    // Pairs grouped by expert, in order.
    let e = experts.gate.len();
    let mut by_expert: Vec<Vec<u32>> = vec![Vec::new(); e];
    for (p, &id) in route.ids.iter().enumerate() {
        by_expert[id as usize].push(dim(p, "pair")?);
    }
    let mut idx = Vec::with_capacity(pairs);
    let mut spans = Vec::new();
    for (id, ps) in by_expert.iter().enumerate() {
        if !ps.is_empty() {
            spans.push((id, idx.len(), ps.len()));
            idx.extend_from_slice(ps);
        }
    }
    let xb = on_gpu(rt, x)?;
    let ib = words(rt, &idx, "expert pairs")?;
    let (g, gb) = alloc(rt, vec![pairs, inter], "expert gate")?;
    let (u, ub) = alloc(rt, vec![pairs, inter], "expert up")?;
    for &(id, base, count) in &spans {
        let span = (base, count);
        let dims = (hidden, inter, topk);
        expert_matmul(rt, experts.gate[id], &xb, &ib, span, dims, false, &gb)?;
        expert_matmul(rt, experts.up[id], &xb, &ib, span, dims, false, &ub)?;
    }
    let h = activation::binary(rt, "silu_mul", &g, &u)?;
    let hb = on_gpu(rt, &h)?;
    let (_d, db) = alloc(rt, vec![pairs, hidden], "expert down")?;
    for &(id, base, count) in &spans {
        let dims = (inter, hidden, topk);
        expert_matmul(
            rt,
            experts.down[id],
            &hb,
            &ib,
            (base, count),
            dims,
            true,
            &db,
        )?;
    }
    let wb = rt.upload(bytemuck::cast_slice(route.weights), "expert weights")?;
    let (y, yb) = alloc(rt, vec![n, hidden], "moe output")?;
    let total = n * hidden;
    let gr = grid(
        total,
        EW as usize,
        rt.limits.max_compute_workgroups_per_dimension,
    );
    let kernel = rt.kernel(&combine_variant())?;
    rt.dispatch(
        &kernel,
        &[
            dim(total, "values")?,
            dim(hidden, "width")?,
            dim(topk, "top-k")?,
            gr[0],
        ],
        &[(1, &db), (2, &wb), (3, &yb)],
        gr,
    )?;
    match experts.shared {
        None => Ok(y),
        Some([sg, su, sd]) => {
            let g = matmul::matmul(rt, x, sg, None)?;
            let u = matmul::matmul(rt, x, su, None)?;
            let h = activation::binary(rt, "silu_mul", &g, &u)?;
            let s = matmul::matmul(rt, &h, sd, None)?;
            activation::binary(rt, "add", &y, &s)
        }
    }
}
