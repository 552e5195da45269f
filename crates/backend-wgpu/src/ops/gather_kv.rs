//! Rows of a KV store read back by slot, as f32 (`shaders/gather_kv.wgsl`):
//! multi-head latent attention expands its compressed cache through it.

use std::sync::Arc;

use mm_core::{KvStore, Result, Tensor};

use super::{dim, WG};
use crate::buffer::{alloc, kv_buffer, words};
use crate::runtime::{grid, Runtime};
use crate::shader::Variant;

fn variant(f16: bool) -> Variant {
    Variant::new("gather_kv", "gather_kv")
        .with("WG", WG)
        .with("F16", f16)
}

pub fn variants() -> Vec<Variant> {
    vec![variant(false), variant(true)]
}

pub fn gather_kv(rt: &Arc<Runtime>, store: &KvStore, slots: &[u32]) -> Result<Tensor> {
    store.check_read(slots)?;
    let width = store.width();
    let total = slots.len() * width;
    if total == 0 {
        return Ok(Tensor::zeros(vec![slots.len(), width]));
    }
    let (buf, f16) = kv_buffer(store)?;
    let kernel = rt.kernel(&variant(f16))?;
    let sb = words(rt, slots, "KV slots")?;
    let (y, yb) = alloc(rt, vec![slots.len(), width], "gathered KV rows")?;
    let g = grid(
        total,
        WG as usize,
        rt.limits.max_compute_workgroups_per_dimension,
    );
    rt.dispatch(
        &kernel,
        &[dim(total, "values")?, dim(width, "width")?, g[0], 0],
        &[(1, &buf.buf), (2, &sb), (3, &yb)],
        g,
    )?;
    Ok(y)
}
