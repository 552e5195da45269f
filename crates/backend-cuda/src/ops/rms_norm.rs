//! RMSNorm (`kernels/rms_norm.cu`): one block per row.

use cudarc::driver::PushKernelArg;
use mm_core::{Error, Result, Tensor};

use crate::buffer::{alloc, on_device, tensor};
use crate::compile::RMS_NORM;
use crate::runtime::{driver_err, Runtime};

/// `vec`: rows read once into registers (the kernel's first path; see
/// kernels/rms_norm.cu), else the strided loop.
pub fn rms_norm(rt: &Runtime, x: &Tensor, w: &Tensor, eps: f32, vec: bool) -> Result<Tensor> {
    let k = *x.shape().last().unwrap_or(&0);
    if w.numel() != k || k == 0 {
        return Err(Error::Invalid(format!(
            "rms_norm: weight has {} values, rows have {k}",
            w.numel()
        )));
    }
    let rows = x.numel() / k;
    if rows == 0 {
        return Ok(Tensor::zeros(x.shape().to_vec()));
    }
    let (xd, wd) = (on_device(rt, x)?, on_device(rt, w)?);
    let mut y = alloc(rt, x.numel(), "rms_norm output")?;
    let f = rt.function(&RMS_NORM, "rms_norm_f32")?;
    let k = super::dim(k, "rms_norm width")?;
    let vec = i32::from(vec);
    let mut b = rt.stream.launch_builder(&f);
    b.arg(xd.slice())
        .arg(wd.slice())
        .arg(&mut y)
        .arg(&k)
        .arg(&eps)
        .arg(&vec);
    // SAFETY: x and y hold rows·k values, w holds k.
    unsafe { b.launch(super::grid(rows, 256)) }.map_err(|e| driver_err("rms_norm", e))?;
    tensor(rt, x.shape().to_vec(), y)
}
