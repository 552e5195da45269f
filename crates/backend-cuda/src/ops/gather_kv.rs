//! Reads rows of a paged KV store back by slot on the GPU
//! (`kernels/gather_kv.cu`): `[slots.len(), width]` f32, the slots checked
//! on the host first.

use cudarc::driver::PushKernelArg;
use mm_core::{KvDType, KvStore, Result, Tensor};

use crate::buffer::{alloc, kv_buffer, tensor};
use crate::compile::GATHER_KV;
use crate::runtime::{driver_err, Runtime};

pub fn gather_kv(rt: &Runtime, store: &KvStore, slots: &[u32]) -> Result<Tensor> {
    store.check_read(slots)?;
    let (rows, width) = (slots.len(), store.width());
    if rows == 0 || width == 0 {
        return Ok(Tensor::zeros(vec![rows, width]));
    }
    let buf = kv_buffer(store, "gather_kv")?;
    let sl = rt.upload_cached("gathered KV slots", slots)?;
    let name = match buf.dtype {
        KvDType::F32 => "gather_kv_f32",
        KvDType::F16 => "gather_kv_f16",
    };
    let f = rt.function(&GATHER_KV, name)?;
    let mut out = alloc(rt, rows * width, "gathered KV rows")?;
    let (ri, wi) = (
        super::dim(rows, "gather_kv rows")?,
        super::dim(width, "gather_kv width")?,
    );
    let mut l = rt.stream.launch_builder(&f);
    l.arg(&buf.data)
        .arg(sl.as_ref())
        .arg(&mut out)
        .arg(&ri)
        .arg(&wi);
    // SAFETY: the store holds slots × width values and every slot was
    // checked against it; out holds rows × width.
    unsafe { l.launch(super::cover(rows * width, 256)) }.map_err(|e| driver_err("gather_kv", e))?;
    tensor(rt, vec![rows, width], out)
}
