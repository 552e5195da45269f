//! `y[n, m] = x[n, k] · w[m, k]ᵀ (+ bias)` for dense weights
//! (`kernels/matmul.cu`): the weight uploaded once, f32 activations and
//! sums. Quantized formats are not on the GPU yet (the device sends them
//! to the CPU backend).

use cudarc::driver::{LaunchConfig, PushKernelArg};
use mm_core::{Error, Result, Tensor, WeightData};

use crate::buffer::{alloc, on_device, tensor, weight};
use crate::compile::MATMUL;
use crate::runtime::{driver_err, Runtime};

/// Activation rows per warp (`ROWS` in the kernel).
const ROWS: usize = 8;
/// Warps (weight rows) per block.
const WARPS: usize = 8;

pub fn matmul(rt: &Runtime, x: &Tensor, w: &WeightData, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, k, m) = mm_core::backend::matmul_dims(x, w, bias)?;
    let Some(suffix) = super::embedding::elem(w.format) else {
        return Err(Error::Invalid(format!(
            "cuda matmul: {} weights are not supported",
            w.format.name()
        )));
    };
    if n == 0 || m == 0 {
        return Ok(Tensor::zeros(vec![n, m]));
    }
    let wd = weight(rt, w)?;
    let xd = on_device(rt, x)?;
    let bd = bias.map(|b| on_device(rt, b)).transpose()?;
    let mut y = alloc(rt, n * m, "matmul output")?;
    let f = rt.function(&MATMUL, &format!("matmul_{suffix}"))?;
    let (ni, ki, mi) = (
        super::dim(n, "matmul rows")?,
        super::dim(k, "matmul k")?,
        super::dim(m, "matmul m")?,
    );
    let null = 0u64;
    let mut l = rt.stream.launch_builder(&f);
    l.arg(&wd.bytes).arg(xd.slice());
    match &bd {
        Some(b) => l.arg(b.slice()),
        None => l.arg(&null),
    };
    l.arg(&mut y).arg(&ni).arg(&ki).arg(&mi);
    let cfg = LaunchConfig {
        grid_dim: (m.div_ceil(WARPS) as u32, n.div_ceil(ROWS) as u32, 1),
        block_dim: (32 * WARPS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: w holds m·k values of its type, x n·k, bias m (or null), y
    // n·m; the kernel checks its row indices.
    unsafe { l.launch(cfg) }.map_err(|e| driver_err("matmul", e))?;
    tensor(rt, vec![n, m], y)
}
