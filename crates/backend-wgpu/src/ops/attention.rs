//! Paged causal attention with grouped query heads over KV stores in GPU
//! memory (`shaders/attention.wgsl`): one workgroup per (query head, row),
//! online softmax over tiles of keys.

use std::sync::Arc;

use mm_core::{Error, KvStore, PagedBatch, PagedParams, Result, Tensor};

use super::dim;
use crate::buffer::{alloc, kv_buffer, on_gpu, words};
use crate::runtime::{spread, Runtime};
use crate::shader::Variant;

/// Threads (and keys per tile) per workgroup.
const WG: u32 = 64;
/// Head widths up to this run here (MLA's absorbed heads are 576 wide).
pub const MAXD: usize = 1024;

fn variant(f16: bool) -> Variant {
    Variant::new("attention", "attention")
        .with("WG", WG)
        .with("MAXD", MAXD)
        .with("F16", f16)
}

pub fn variants() -> Vec<Variant> {
    vec![variant(false), variant(true)]
}

pub fn paged_attention(
    rt: &Arc<Runtime>,
    q: &Tensor,
    k: &KvStore,
    v: &KvStore,
    batch: &PagedBatch,
    p: &PagedParams,
) -> Result<Tensor> {
    let rows = mm_core::kv::attention_rows(q, k, v, batch, p)?;
    if p.head_dim > MAXD {
        return Err(Error::Invalid(format!(
            "wgpu attention: heads of {} values, past the kernel's {MAXD}",
            p.head_dim
        )));
    }
    let width = p.n_heads * p.head_dim;
    if rows == 0 || width == 0 {
        return Ok(Tensor::zeros(vec![rows, width]));
    }
    let ((kb, f16), (vb, _)) = (kv_buffer(k)?, kv_buffer(v)?);
    // (position, first visible key, table start) per query row.
    let mut info = Vec::with_capacity(rows * 3);
    for s in &batch.seqs {
        for i in 0..s.q_len {
            let pos = s.kv_len - s.q_len + i;
            let first = p.window.map_or(0, |w| (pos + 1).saturating_sub(w.max(1)));
            info.extend([
                dim(pos, "position")?,
                dim(first, "position")?,
                dim(s.table_start, "table")?,
            ]);
        }
    }
    let kernel = rt.kernel(&variant(f16))?;
    let qb = on_gpu(rt, q)?;
    let ib = words(rt, &info, "attention rows")?;
    let tb = words(rt, &batch.block_tables, "block tables")?;
    let (y, yb) = alloc(rt, vec![rows, width], "attention output")?;
    let [gy, gz] = spread(rows, rt.limits.max_compute_workgroups_per_dimension);
    let params = [
        dim(p.n_heads, "heads")?,
        dim(p.n_heads / p.n_kv_heads, "heads per KV head")?,
        dim(p.head_dim, "head_dim")?,
        dim(k.width(), "KV width")?,
        dim(batch.block_size, "block size")?,
        p.scale.to_bits(),
        gy,
        dim(rows, "rows")?,
    ];
    rt.dispatch(
        &kernel,
        &params,
        &[
            (1, &qb),
            (2, &kb.buf),
            (3, &vb.buf),
            (4, &ib),
            (5, &tb),
            (6, &yb),
        ],
        [dim(p.n_heads, "heads")?, gy, gz],
    )?;
    Ok(y)
}
