//! Per-head matmul in f32 (`shaders/head_matmul.wgsl`): multi-head latent
//! attention's absorbed projections, `x[n, h·k]` by `w[h, m, k]`.

use std::sync::Arc;

use mm_core::{Result, Tensor};

use super::dim;
use crate::buffer::{alloc, on_gpu};
use crate::runtime::{spread, Runtime};
use crate::shader::Variant;

/// Threads per workgroup.
const WG: u32 = 64;

fn variant() -> Variant {
    Variant::new("head_matmul", "head_matmul").with("WG", WG)
}

pub fn variants() -> Vec<Variant> {
    vec![variant()]
}

pub fn head_matmul(rt: &Arc<Runtime>, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n, h, k, m) = mm_core::backend::head_matmul_dims(x, w)?;
    if n == 0 || m == 0 {
        return Ok(Tensor::zeros(vec![n, h * m]));
    }
    let kernel = rt.kernel(&variant())?;
    let (xb, wb) = (on_gpu(rt, x)?, on_gpu(rt, w)?);
    let (y, yb) = alloc(rt, vec![n, h * m], "head_matmul output")?;
    let rh = n * h;
    let [gy, gz] = spread(rh, rt.limits.max_compute_workgroups_per_dimension);
    let params = [
        dim(h, "heads")?,
        dim(k, "inputs")?,
        dim(m, "outputs")?,
        gy,
        dim(rh, "rows × heads")?,
    ];
    rt.dispatch(
        &kernel,
        &params,
        &[(1, &xb), (2, &wb), (3, &yb)],
        [dim(m.div_ceil(4), "output blocks")?, gy, gz],
    )?;
    Ok(y)
}
