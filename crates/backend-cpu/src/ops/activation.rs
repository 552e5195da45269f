//! Elementwise ops: `silu(gate) * up` (SwiGLU) and `a + b`.
//! Rows are split across threads for large tensors.

use mm_core::{Result, Tensor};

use super::same_shape;

const PAR_MIN: usize = 1 << 15;

fn zip_map(a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Tensor> {
    let (a_s, b_s) = (a.as_slice()?, b.as_slice()?);
    let mut out = mm_core::host_pool::zeroed(a_s.len());
    let chunk = if out.len() >= PAR_MIN {
        4096
    } else {
        out.len()
    };
    crate::pool::for_each_chunk_mut(&mut out, chunk, |c, o| {
        o.iter_mut()
            .zip(a_s[c * chunk..].iter().zip(&b_s[c * chunk..]))
            .for_each(|(o, (x, y))| *o = f(*x, *y))
    });
    Tensor::from_vec(a.shape().to_vec(), out)
}

/// `silu(gate) * up` (vectorized exp, `vmath.rs`).
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    same_shape("silu_mul", gate, up)?;
    let (g, u) = (gate.as_slice()?, up.as_slice()?);
    let mut out = mm_core::host_pool::zeroed(g.len());
    let chunk = if out.len() >= PAR_MIN {
        4096
    } else {
        out.len().max(1)
    };
    crate::pool::for_each_chunk_mut(&mut out, chunk, |c, o| {
        let at = c * chunk;
        super::vmath::silu_mul(&g[at..at + o.len()], &u[at..at + o.len()], o)
    });
    Tensor::from_vec(gate.shape().to_vec(), out)
}

/// Scalar reference of [`silu_mul`].
pub fn silu_mul_ref(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| (g as f64 / (1.0 + (-(g as f64)).exp()) * u as f64) as f32)
        .collect()
}

/// `a + b`.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_shape("add", a, b)?;
    zip_map(a, b, |x, y| x + y)
}

/// Scalar reference of [`add`].
pub fn add_ref(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}
