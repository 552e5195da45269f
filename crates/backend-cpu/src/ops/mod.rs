//! CPU ops, one file per op, each with its scalar `_ref` twin.

pub mod activation;
pub mod attention;
pub mod embedding;
pub mod gather_kv;
pub mod head_matmul;
pub mod matmul;
pub mod moe;
pub mod qmatmul;
pub mod rms_norm;
pub mod rope;
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
