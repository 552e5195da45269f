//! CPU ops, one file per op, each with its scalar `_ref` twin.

pub mod activation;
pub mod attention;
pub mod concat_cols;
pub mod embedding;
pub mod gather_kv;
pub mod head_matmul;
pub mod matmul;
pub mod moe;
pub mod qmatmul;
pub mod rms_norm;
pub mod rope;
pub mod sample;
pub mod slice_cols;
pub mod vmath;
pub mod write_kv;

use mm_core::{Error, Result, Tensor};

/// Checks that two tensors have the same shape.
pub(crate) fn same_shape(op: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::Invalid(format!(
            "{op}: shapes differ: {:?} vs {:?}",
            a.shape(),
            b.shape()
        )));
    }
    Ok(())
}

/// Calls `f(r, row)` for every row `r` of `out` (rows of `row` values),
/// rows split across threads once `out` holds `1 << 15` values or more:
/// the row-wise copies (`slice_cols`, `concat_cols`).
pub(crate) fn for_each_row(out: &mut [f32], row: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    const PAR_MIN: usize = 1 << 15;
    if row == 0 {
        return;
    }
    let rows = match out.len() >= PAR_MIN {
        true => (PAR_MIN / row).max(1),
        false => (out.len() / row).max(1),
    };
    crate::pool::for_each_chunk_mut(out, rows * row, |c, o| {
        for (i, o) in o.chunks_exact_mut(row).enumerate() {
            f(c * rows + i, o)
        }
    });
}
