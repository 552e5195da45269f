//! Per-head matmul on the GPU (`kernels/head_matmul.cu`): `x[n, h*k]` by
//! `w[h, m, k]` gives `y[n, h*m]`, f32 sums.

use cudarc::driver::PushKernelArg;
use mm_core::{Result, Tensor};

use crate::buffer::{alloc, on_device, tensor};
use crate::compile::HEAD_MATMUL;
use crate::runtime::{driver_err, Runtime};

pub fn head_matmul(rt: &Runtime, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n, h, k, m) = mm_core::backend::head_matmul_dims(x, w)?;
    if n == 0 || m == 0 {
        return Ok(Tensor::zeros(vec![n, h * m]));
    }
    let (xd, wd) = (on_device(rt, x)?, on_device(rt, w)?);
    let f = rt.function(&HEAD_MATMUL, "head_matmul_f32")?;
    let mut y = alloc(rt, n * h * m, "head_matmul output")?;
    let dims = [
        super::dim(n, "head_matmul rows")?,
        super::dim(h, "head_matmul heads")?,
        super::dim(k, "head_matmul k")?,
        super::dim(m, "head_matmul m")?,
    ];
    let mut l = rt.stream.launch_builder(&f);
    l.arg(xd.slice()).arg(wd.slice()).arg(&mut y);
    for d in &dims {
        l.arg(d);
    }
    // SAFETY: x holds n·h·k values, w h·m·k and y n·h·m (checked by
    // head_matmul_dims); one warp per output, grid-stride.
    unsafe { l.launch(super::cover(n * h * m * 32, 256)) }
        .map_err(|e| driver_err("head_matmul", e))?;
    tensor(rt, vec![n, h * m], y)
}
