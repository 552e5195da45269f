//! Rows of an embedding table of any format the matmul takes
//! (`shaders/embedding.wgsl`), read from the table's GPU form, the same
//! one a tied LM head multiplies by.

use std::sync::Arc;

use mm_core::{Error, Result, Tensor, WeightData};

use super::{dim, WG};
use crate::buffer::{alloc, words};
use crate::runtime::{grid, Runtime};
use crate::shader::Variant;
use crate::weight::{all_stored, prepare, template, Stored};

fn variant(stored: Stored) -> Variant {
    Variant::new("embedding", "embedding")
        .with("WG", WG)
        .with("WEIGHT", template(stored))
}

pub fn variants() -> Vec<Variant> {
    all_stored().into_iter().map(variant).collect()
}

pub fn embedding(rt: &Arc<Runtime>, ids: &[u32], table: &WeightData) -> Result<Tensor> {
    let (vocab, k) = table.dims2()?;
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(Error::Invalid(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let total = ids.len() * k;
    if total == 0 {
        return Ok(Tensor::zeros(vec![ids.len(), k]));
    }
    let gw = prepare(rt, table)?;
    let kernel = rt.kernel(&variant(gw.stored))?;
    let idb = words(rt, ids, "token ids")?;
    let (y, yb) = alloc(rt, vec![ids.len(), k], "embedding output")?;
    let g = grid(
        total,
        WG as usize,
        rt.limits.max_compute_workgroups_per_dimension,
    );
    for s in &gw.shards {
        let mut bind = vec![(1, &idb), (2, &yb)];
        bind.extend(s.bindings());
        rt.dispatch(
            &kernel,
            &[
                dim(total, "values")?,
                dim(k, "width")?,
                dim(gw.kp, "padded width")?,
                dim(gw.group, "group")?,
                g[0],
                dim(s.row0, "first row")?,
                dim(s.rows, "rows")?,
            ],
            &bind,
            g,
        )?;
    }
    Ok(y)
}
