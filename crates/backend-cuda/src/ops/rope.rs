//! Rotary embedding (`kernels/rope.cu`): a copy of `x` rotated in place,
//! one thread per rotated pair.

use cudarc::driver::PushKernelArg;
use mm_core::{Result, Tensor};

use crate::buffer::{alloc, on_device, tensor};
use crate::compile::ROPE;
use crate::runtime::{driver_err, Runtime};

pub fn rope(
    rt: &Runtime,
    x: &Tensor,
    head_dim: usize,
    positions: &[u32],
    inv_freq: &[f32],
    mscale: f32,
) -> Result<Tensor> {
    let (n, width) = mm_core::backend::rope_dims(x, head_dim, positions, inv_freq)?;
    if n == 0 || width == 0 {
        return Ok(Tensor::zeros(vec![n, width]));
    }
    let xd = on_device(rt, x)?;
    let mut y = alloc(rt, n * width, "rope output")?;
    rt.stream
        .memcpy_dtod(xd.slice(), &mut y)
        .map_err(|e| driver_err("rope copy", e))?;
    let pos = rt.upload_cached("rope positions", positions)?;
    let freq = rt.upload_cached("rope frequencies", inv_freq)?;
    let f = rt.function(&ROPE, "rope_f32")?;
    let (ni, wi, hi) = (
        super::dim(n, "rope rows")?,
        super::dim(width, "rope width")?,
        super::dim(head_dim, "rope head_dim")?,
    );
    let mut l = rt.stream.launch_builder(&f);
    l.arg(&mut y)
        .arg(pos.as_ref())
        .arg(freq.as_ref())
        .arg(&ni)
        .arg(&wi)
        .arg(&hi)
        .arg(&mscale);
    // SAFETY: y holds n·width values, pos n, freq head_dim/2; one thread
    // per pair, the kernel checks its index.
    unsafe { l.launch(super::grid((n * width / 2).div_ceil(256), 256)) }
        .map_err(|e| driver_err("rope", e))?;
    tensor(rt, vec![n, width], y)
}
