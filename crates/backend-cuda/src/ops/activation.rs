//! Elementwise ops (`kernels/activation.cu`): `silu(gate)·up` and `a + b`.

use cudarc::driver::PushKernelArg;
use mm_core::{Error, Result, Tensor};

use crate::buffer::{alloc, on_device, tensor};
use crate::compile::ACTIVATION;
use crate::runtime::{driver_err, Runtime};

fn binary(rt: &Runtime, name: &str, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return Err(Error::Invalid(format!(
            "{name}: shapes {:?} and {:?} differ",
            a.shape(),
            b.shape()
        )));
    }
    let n = a.numel();
    if n == 0 {
        return Ok(Tensor::zeros(a.shape().to_vec()));
    }
    let (ad, bd) = (on_device(rt, a)?, on_device(rt, b)?);
    let mut y = alloc(rt, n, name)?;
    let f = rt.function(&ACTIVATION, &format!("{name}_f32"))?;
    let n64 = n as u64;
    let mut l = rt.stream.launch_builder(&f);
    l.arg(ad.slice()).arg(bd.slice()).arg(&mut y).arg(&n64);
    // SAFETY: all three buffers hold n values; the kernel loops to n.
    unsafe { l.launch(super::cover(n, 256)) }.map_err(|e| driver_err(name, e))?;
    tensor(rt, a.shape().to_vec(), y)
}

pub fn silu_mul(rt: &Runtime, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    binary(rt, "silu_mul", gate, up)
}

pub fn add(rt: &Runtime, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(rt, "add", a, b)
}
