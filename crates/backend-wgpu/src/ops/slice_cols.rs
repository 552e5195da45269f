//! A window of every group's columns (`shaders/slice_cols.wgsl`): multi-
//! head latent attention and partial RoPE take heads apart with it. A copy.

use std::sync::Arc;

use mm_core::{Result, Tensor};

use super::{dim, WG};
use crate::buffer::{alloc, on_gpu};
use crate::runtime::{grid, Runtime};
use crate::shader::Variant;

fn variant() -> Variant {
    Variant::new("slice_cols", "slice_cols").with("WG", WG)
}

pub fn variants() -> Vec<Variant> {
    vec![variant()]
}

pub fn slice_cols(
    rt: &Arc<Runtime>,
    x: &Tensor,
    groups: usize,
    offset: usize,
    len: usize,
    pairs: bool,
) -> Result<Tensor> {
    let (n, gw) = mm_core::backend::slice_cols_dims(x, groups, offset, len, pairs)?;
    let total = n * groups * len;
    if total == 0 {
        return Ok(Tensor::zeros(vec![n, groups * len]));
    }
    let kernel = rt.kernel(&variant())?;
    let xb = on_gpu(rt, x)?;
    let (y, yb) = alloc(rt, vec![n, groups * len], "slice_cols output")?;
    let g = grid(
        total,
        WG as usize,
        rt.limits.max_compute_workgroups_per_dimension,
    );
    let params = [
        dim(total, "values")?,
        dim(gw, "group width")?,
        dim(offset, "offset")?,
        dim(len, "window")?,
        pairs as u32,
        g[0],
    ];
    rt.dispatch(&kernel, &params, &[(1, &xb), (2, &yb)], g)?;
    Ok(y)
}
