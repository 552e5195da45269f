//! Two tensors' columns side by side per group on the GPU
//! (`kernels/concat_cols.cu`): `a[n, groups*la]` and `b[n, b_groups*lb]`
//! give `y[n, groups*(la + lb)]`. A copy: exact.

use cudarc::driver::PushKernelArg;
use mm_core::{Result, Tensor};

use crate::buffer::{alloc, on_device, tensor};
use crate::compile::CONCAT_COLS;
use crate::runtime::{driver_err, Runtime};

pub fn concat_cols(
    rt: &Runtime,
    a: &Tensor,
    b: &Tensor,
    groups: usize,
    b_groups: usize,
) -> Result<Tensor> {
    let (n, la, lb) = mm_core::backend::concat_cols_dims(a, b, groups, b_groups)?;
    let total = n * groups * (la + lb);
    if total == 0 {
        return Ok(Tensor::zeros(vec![n, groups * (la + lb)]));
    }
    // An empty part has no device buffer: without b the output is a; without
    // a, b when it has a part per group, else a's argument is b (never read).
    if lb == 0 {
        return Ok(a.clone());
    }
    if la == 0 && b_groups == groups {
        return Ok(b.clone());
    }
    let bd = on_device(rt, b)?;
    let ad = match la {
        0 => None,
        _ => Some(on_device(rt, a)?),
    };
    let a_arg = ad.as_ref().map_or(bd.slice(), |d| d.slice());
    let f = rt.function(&CONCAT_COLS, "concat_cols_f32")?;
    let mut y = alloc(rt, total, "concat_cols output")?;
    let n64 = n as u64;
    let dims = [
        super::dim(groups, "concat_cols groups")?,
        super::dim(b_groups, "concat_cols b groups")?,
        super::dim(la, "concat_cols a width")?,
        super::dim(lb, "concat_cols b width")?,
    ];
    let mut l = rt.stream.launch_builder(&f);
    l.arg(a_arg).arg(bd.slice()).arg(&mut y).arg(&n64);
    for d in &dims {
        l.arg(d);
    }
    // SAFETY: a holds n·groups·la values, b n·b_groups·lb, y
    // n·groups·(la + lb) (checked by concat_cols_dims).
    unsafe { l.launch(super::cover(total, 256)) }.map_err(|e| driver_err("concat_cols", e))?;
    tensor(rt, vec![n, groups * (la + lb)], y)
}
