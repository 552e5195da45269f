//! Writing a step's keys or values into their KV-cache slots
//! (`shaders/write_kv.wgsl`), rounded to f16 on the GPU for f16 stores.

use std::sync::Arc;

use mm_core::{Error, KvDType, KvStore, Result, Tensor};

use super::{dim, WG};
use crate::buffer::{kv_buffer, on_gpu, words, Elem, WgpuBuffer};
use crate::runtime::{grid, Runtime};
use crate::shader::Variant;

fn variant(f16: bool) -> Variant {
    Variant::new("write_kv", "write_kv")
        .with("WG", WG)
        .with("F16", f16)
}

pub fn variants() -> Vec<Variant> {
    vec![variant(false), variant(true)]
}

/// A zeroed store of `slots × width` values in GPU memory.
pub fn kv_store(rt: &Arc<Runtime>, slots: usize, width: usize, dtype: KvDType) -> Result<KvStore> {
    let len = slots
        .checked_mul(width)
        .ok_or_else(|| Error::Invalid(format!("KV store of {slots} × {width} overflows")))?;
    let elem = match dtype {
        KvDType::F32 => Elem::F32,
        KvDType::F16 => Elem::F16,
    };
    if elem == Elem::F16 && !width.is_multiple_of(2) {
        return Err(Error::Invalid(format!(
            "wgpu: an f16 KV store needs an even width, not {width}"
        )));
    }
    let bytes = len as u64 * dtype.bytes() as u64;
    let buf = rt.alloc(bytes, "KV store")?;
    KvStore::device(
        slots,
        width,
        dtype,
        Arc::new(WgpuBuffer {
            buf,
            len,
            elem,
            rt: rt.clone(),
            pooled: false,
        }),
    )
}

pub fn write_kv(rt: &Arc<Runtime>, store: &mut KvStore, slots: &[u32], src: &Tensor) -> Result<()> {
    let (rows, width) = src.dims2()?;
    store.check_write(slots, rows, width)?;
    let (buf, f16) = kv_buffer(store)?;
    let total = if f16 { rows * width / 2 } else { rows * width };
    if total == 0 {
        return Ok(());
    }
    let kernel = rt.kernel(&variant(f16))?;
    let sb = on_gpu(rt, src)?;
    let slb = words(rt, slots, "KV slots")?;
    let g = grid(
        total,
        WG as usize,
        rt.limits.max_compute_workgroups_per_dimension,
    );
    rt.dispatch(
        &kernel,
        &[dim(total, "values")?, dim(width, "width")?, g[0], 0],
        &[(1, &sb), (2, &slb), (3, &buf.buf)],
        g,
    )
}
