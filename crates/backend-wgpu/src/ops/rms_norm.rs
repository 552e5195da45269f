//! RMSNorm over the last dimension (`shaders/rms_norm.wgsl`): one
//! workgroup per row.

use std::sync::Arc;

use mm_core::{Error, Result, Tensor};

use super::{dim, WG};
use crate::buffer::{alloc, on_gpu};
use crate::runtime::{grid, Runtime};
use crate::shader::Variant;

fn variant() -> Variant {
    Variant::new("rms_norm", "rms_norm").with("WG", WG)
}

pub fn variants() -> Vec<Variant> {
    vec![variant()]
}

pub fn rms_norm(rt: &Arc<Runtime>, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let (n, k) = x.dims2()?;
    if w.numel() != k {
        return Err(Error::Invalid(format!(
            "rms_norm: weight of {} values for rows of {k}",
            w.numel()
        )));
    }
    if n == 0 || k == 0 {
        return Ok(Tensor::zeros(vec![n, k]));
    }
    let kernel = rt.kernel(&variant())?;
    let (xb, wb) = (on_gpu(rt, x)?, on_gpu(rt, w)?);
    let (y, yb) = alloc(rt, vec![n, k], "rms_norm output")?;
    let g = grid(n, 1, rt.limits.max_compute_workgroups_per_dimension);
    rt.dispatch(
        &kernel,
        &[dim(n, "rows")?, dim(k, "width")?, eps.to_bits(), g[0]],
        &[(1, &xb), (2, &wb), (3, &yb)],
        g,
    )?;
    Ok(y)
}
