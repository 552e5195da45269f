//! Writes a step's keys or values into their paged-cache slots on the GPU
//! (`kernels/write_kv.cu`); the slots are checked on the host first, so a
//! bad slot list leaves the store untouched.

use cudarc::driver::PushKernelArg;
use mm_core::{KvDType, KvStore, Result, Tensor};

use crate::buffer::{kv_buffer, on_device};
use crate::compile::WRITE_KV;
use crate::runtime::{driver_err, Runtime};

pub fn write_kv(rt: &Runtime, store: &mut KvStore, slots: &[u32], src: &Tensor) -> Result<()> {
    let (rows, width) = src.dims2()?;
    store.check_write(slots, rows, width)?;
    if rows == 0 || width == 0 {
        return Ok(());
    }
    let buf = kv_buffer(store, "write_kv")?;
    let xd = on_device(rt, src)?;
    let sl = rt.upload_cached("KV slots", slots)?;
    let name = match buf.dtype {
        KvDType::F32 => "write_kv_f32",
        KvDType::F16 => "write_kv_f16",
    };
    let f = rt.function(&WRITE_KV, name)?;
    let (ri, wi) = (
        super::dim(rows, "write_kv rows")?,
        super::dim(width, "write_kv width")?,
    );
    let mut l = rt.stream.launch_builder(&f);
    l.arg(&buf.data)
        .arg(sl.as_ref())
        .arg(xd.slice())
        .arg(&ri)
        .arg(&wi);
    // SAFETY: the store holds slots × width values and every slot was
    // checked against it; src holds rows × width.
    unsafe { l.launch(super::cover(rows * width, 256)) }.map_err(|e| driver_err("write_kv", e))?;
    Ok(())
}
