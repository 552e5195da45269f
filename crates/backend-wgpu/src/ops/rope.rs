//! Rotary embedding, rotate-half layout (`shaders/rope.wgsl`). The
//! angles' cos and sin are computed here on the host, in f32 exactly as
//! the CPU backend computes them, and uploaded with the step: the GPU's
//! own sin/cos lose accuracy far from zero.

use std::sync::Arc;

use mm_core::{Result, Tensor};

use super::{dim, WG};
use crate::buffer::{alloc, on_gpu};
use crate::runtime::{grid, Runtime};
use crate::shader::Variant;

fn variant() -> Variant {
    Variant::new("rope", "rope").with("WG", WG)
}

pub fn variants() -> Vec<Variant> {
    vec![variant()]
}

pub fn rope(
    rt: &Arc<Runtime>,
    x: &Tensor,
    head_dim: usize,
    positions: &[u32],
    inv_freq: &[f32],
    mscale: f32,
) -> Result<Tensor> {
    let (n, width) = mm_core::backend::rope_dims(x, head_dim, positions, inv_freq)?;
    let total = n * width / 2;
    if total == 0 {
        return Ok(Tensor::zeros(vec![n, width]));
    }
    // The queries and keys of every layer turn by the same angles: the
    // table is computed and uploaded once per (positions, frequencies,
    // mscale).
    let tag: Vec<u8> = bytemuck::cast_slice(positions)
        .iter()
        .chain(bytemuck::cast_slice(inv_freq))
        .chain(&mscale.to_le_bytes())
        .copied()
        .collect();
    let csb = rt.upload_cached("rope angles", &tag, || {
        let mut cs = Vec::with_capacity(n * inv_freq.len() * 2);
        for &p in positions {
            for &f in inv_freq {
                let a = p as f32 * f;
                cs.push(a.cos() * mscale);
                cs.push(a.sin() * mscale);
            }
        }
        bytemuck::cast_slice(&cs).to_vec()
    })?;
    let kernel = rt.kernel(&variant())?;
    let xb = on_gpu(rt, x)?;
    let (y, yb) = alloc(rt, vec![n, width], "rope output")?;
    let g = grid(
        total,
        WG as usize,
        rt.limits.max_compute_workgroups_per_dimension,
    );
    rt.dispatch(
        &kernel,
        &[
            dim(total, "pairs")?,
            dim(width, "width")?,
            dim(head_dim, "head_dim")?,
            g[0],
        ],
        &[(1, &xb), (2, &csb), (3, &yb)],
        g,
    )?;
    Ok(y)
}
