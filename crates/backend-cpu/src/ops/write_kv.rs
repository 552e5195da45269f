//! Writes a step's keys or values into their paged-cache slots.
//!
//! Layout: `src[t, width]` row-major f32; the store holds `slots × width`
//! values (f32, or f16 rounded to nearest even); row `i` goes to slot
//! `slots[i]`. Every slot is checked before anything is written, so a bad
//! slot list leaves the store untouched.

use half::f16;
use mm_core::{Error, KvStorage, KvStore, Result, Tensor};

/// Writes row `i` of `src` into slot `slots[i]` of `store`.
pub fn write_kv(store: &mut KvStore, slots: &[u32], src: &Tensor) -> Result<()> {
    let (rows, w) = src.dims2()?;
    store.check_write(slots, rows, w)?;
    let s = src.as_slice()?;
    match &mut store.storage {
        KvStorage::F32(v) => {
            for (row, &slot) in s.chunks_exact(w).zip(slots) {
                v[slot as usize * w..][..w].copy_from_slice(row);
            }
        }
        KvStorage::F16(v) => {
            use half::slice::HalfFloatSliceExt;
            for (row, &slot) in s.chunks_exact(w).zip(slots) {
                v[slot as usize * w..][..w].convert_from_f32_slice(row);
            }
        }
        KvStorage::Device(b) => {
            return Err(Error::Invalid(format!(
                "write_kv: the store lives on {}, not the host",
                b.backend()
            )))
        }
    }
    Ok(())
}

/// Scalar reference of [`write_kv`] on an f32 image of the store: the
/// values as the store keeps them (f16-rounded for an f16 store).
pub fn write_kv_ref(dst: &mut [f32], width: usize, slots: &[u32], src: &[f32], f16_store: bool) {
    for (i, &slot) in slots.iter().enumerate() {
        for e in 0..width {
            let x = src[i * width + e];
            dst[slot as usize * width + e] = if f16_store {
                f16::from_f32(x).to_f32()
            } else {
                x
            };
        }
    }
}
