//! Two tensors' columns side by side per group
//! (`shaders/concat_cols.wgsl`): multi-head latent attention's cache rows
//! and absorbed queries, partial RoPE's heads put back together. A copy.

use std::sync::Arc;

use mm_core::{Result, Tensor};

use super::{dim, WG};
use crate::buffer::{alloc, on_gpu};
use crate::runtime::{grid, Runtime};
use crate::shader::Variant;

fn variant() -> Variant {
    Variant::new("concat_cols", "concat_cols").with("WG", WG)
}

pub fn variants() -> Vec<Variant> {
    vec![variant()]
}

pub fn concat_cols(
    rt: &Arc<Runtime>,
    a: &Tensor,
    b: &Tensor,
    groups: usize,
    b_groups: usize,
) -> Result<Tensor> {
    let (n, la, lb) = mm_core::backend::concat_cols_dims(a, b, groups, b_groups)?;
    let width = groups * (la + lb);
    let total = n * width;
    if total == 0 {
        return Ok(Tensor::zeros(vec![n, width]));
    }
    let kernel = rt.kernel(&variant())?;
    let (ab, bb) = (on_gpu(rt, a)?, on_gpu(rt, b)?);
    let (y, yb) = alloc(rt, vec![n, width], "concat_cols output")?;
    let g = grid(
        total,
        WG as usize,
        rt.limits.max_compute_workgroups_per_dimension,
    );
    let params = [
        dim(total, "values")?,
        dim(groups, "groups")?,
        dim(b_groups, "groups of b")?,
        dim(la, "columns of a")?,
        dim(lb, "columns of b")?,
        g[0],
    ];
    rt.dispatch(&kernel, &params, &[(1, &ab), (2, &bb), (3, &yb)], g)?;
    Ok(y)
}
