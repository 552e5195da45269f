//! The ops of the CUDA backend: one file per op, the same names as the CPU
//! backend's (`crates/backend-cpu/src/ops`), each launching the kernels of
//! its `kernels/<op>.cu` file.

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
pub mod tc_matmul;
pub mod trellis;
pub mod write_kv;

use cudarc::driver::LaunchConfig;

/// A 1-D launch of `blocks` blocks of `threads` threads.
pub(crate) fn grid(blocks: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Blocks of `threads` threads covering `n` items (at most 65535·16, the
/// kernels loop over the rest).
pub(crate) fn cover(n: usize, threads: u32) -> LaunchConfig {
    grid(n.div_ceil(threads as usize).clamp(1, 65535 * 16), threads)
}

/// `i32` of a dimension, or an error naming it.
pub(crate) fn dim(v: usize, what: &str) -> mm_core::Result<i32> {
    i32::try_from(v).map_err(|_| mm_core::Error::Invalid(format!("cuda: {what} = {v} exceeds i32")))
}

/// Pushes `v`, or a null pointer (`null`, a zero u64) when absent: the
/// kernels' optional arguments (bias, row lists).
pub(crate) fn arg_or_null<'a, T>(
    l: &mut cudarc::driver::LaunchArgs<'a>,
    v: Option<&'a cudarc::driver::CudaSlice<T>>,
    null: &'a u64,
) {
    use cudarc::driver::PushKernelArg;
    match v {
        Some(v) => l.arg(v),
        None => l.arg(null),
    };
}
