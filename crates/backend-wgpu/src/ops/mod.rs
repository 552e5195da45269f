//! The ops, one file each, named as in every backend (`backend-cpu`,
//! `backend-cuda`); each builds its kernel variants ([`crate::shader`])
//! and records their dispatches ([`crate::runtime`]).

pub mod activation;
pub mod attention;
pub mod concat_cols;
pub mod embedding;
pub mod gather_kv;
pub mod head_matmul;
pub mod matmul;
pub mod moe;
pub mod rms_norm;
pub mod rope;
pub mod sample;
pub mod slice_cols;
pub mod trellis;
pub mod write_kv;

use mm_core::{Error, Result};

/// Threads per workgroup of the elementwise kernels.
pub const WG: u32 = 256;

/// `v` as a kernel's u32 parameter, or an error naming it.
pub fn dim(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v)
        .map_err(|_| Error::Invalid(format!("wgpu: {what} {v} does not fit in 32 bits")))
}
