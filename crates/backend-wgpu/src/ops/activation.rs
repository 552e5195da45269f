//! SiLU·mul and add, elementwise (`shaders/activation.wgsl`).

use std::sync::Arc;

use mm_core::{Error, Result, Tensor};

use super::{dim, WG};
use crate::buffer::{alloc, on_gpu};
use crate::runtime::{grid, Runtime};
use crate::shader::Variant;

fn variant(entry: &'static str) -> Variant {
    Variant::new("activation", entry).with("WG", WG)
}

pub fn variants() -> Vec<Variant> {
    vec![variant("silu_mul"), variant("add")]
}

/// `entry` over two tensors of one shape.
pub fn binary(rt: &Arc<Runtime>, entry: &'static str, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return Err(Error::Invalid(format!(
            "{entry}: shapes {:?} and {:?} differ",
            a.shape(),
            b.shape()
        )));
    }
    let n = a.numel();
    if n == 0 {
        return Ok(Tensor::zeros(a.shape().to_vec()));
    }
    let kernel = rt.kernel(&variant(entry))?;
    let (ab, bb) = (on_gpu(rt, a)?, on_gpu(rt, b)?);
    let (y, yb) = alloc(rt, a.shape().to_vec(), entry)?;
    let g = grid(
        n,
        WG as usize,
        rt.limits.max_compute_workgroups_per_dimension,
    );
    rt.dispatch(
        &kernel,
        &[dim(n, "values")?, g[0]],
        &[(1, &ab), (2, &bb), (3, &yb)],
        g,
    )?;
    Ok(y)
}
