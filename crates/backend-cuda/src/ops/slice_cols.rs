//! A window of every group's columns on the GPU (`kernels/slice_cols.cu`):
//! `x[n, groups*gw]` gives `y[n, groups*len]`, zero-padded past a group's
//! end, interleaved pairs optionally taken apart. A copy: exact.

use cudarc::driver::PushKernelArg;
use mm_core::{Result, Tensor};

use crate::buffer::{alloc, on_device, tensor};
use crate::compile::SLICE_COLS;
use crate::runtime::{driver_err, Runtime};

pub fn slice_cols(
    rt: &Runtime,
    x: &Tensor,
    groups: usize,
    offset: usize,
    len: usize,
    pairs: bool,
) -> Result<Tensor> {
    let (n, gw) = mm_core::backend::slice_cols_dims(x, groups, offset, len, pairs)?;
    let total = n * groups * len;
    if total == 0 {
        return Ok(Tensor::zeros(vec![n, groups * len]));
    }
    if gw == 0 {
        // Groups of no columns: padding only (x has no device buffer).
        let y = rt
            .stream
            .alloc_zeros::<f32>(total)
            .map_err(|e| crate::buffer::oom(rt, 4 * total, "slice_cols output", e))?;
        return tensor(rt, vec![n, groups * len], y);
    }
    let xd = on_device(rt, x)?;
    let f = rt.function(&SLICE_COLS, "slice_cols_f32")?;
    let mut y = alloc(rt, total, "slice_cols output")?;
    let n64 = n as u64;
    let dims = [
        super::dim(groups, "slice_cols groups")?,
        super::dim(gw, "slice_cols group width")?,
        super::dim(offset, "slice_cols offset")?,
        super::dim(len, "slice_cols len")?,
        pairs as i32,
    ];
    let mut l = rt.stream.launch_builder(&f);
    l.arg(xd.slice()).arg(&mut y).arg(&n64);
    for d in &dims {
        l.arg(d);
    }
    // SAFETY: x holds n·groups·gw values, y n·groups·len (checked by
    // slice_cols_dims); the kernel reads a column only below gw.
    unsafe { l.launch(super::cover(total, 256)) }.map_err(|e| driver_err("slice_cols", e))?;
    tensor(rt, vec![n, groups * len], y)
}
