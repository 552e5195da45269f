//! Reads rows of a paged KV store back by slot.
//!
//! Layout: the store holds `slots × width` values (f32, or f16 widened
//! exactly); the output is `[slots.len(), width]` f32, row `i` the store's
//! slot `slots[i]`. Multi-head latent attention expands its compressed
//! cache through this (prefill in the expanded form). Every slot is checked
//! before anything is read.

use mm_core::{Error, KvStorage, KvStore, Result, Tensor};

/// Rows `slots` of `store`, widened to f32.
pub fn gather_kv(store: &KvStore, slots: &[u32]) -> Result<Tensor> {
    store.check_read(slots)?;
    let w = store.width();
    let mut out = mm_core::host_pool::zeroed(slots.len() * w);
    if w > 0 {
        if let KvStorage::Device(b) = &store.storage {
            return Err(Error::Invalid(format!(
                "gather_kv: the store lives on {}, not the host",
                b.backend()
            )));
        }
        for (row, &slot) in out.chunks_exact_mut(w).zip(slots) {
            store.read_row(slot as usize, row)?;
        }
    }
    Tensor::from_vec(vec![slots.len(), w], out)
}

/// Scalar reference over an f32 image of the store (`slots × width`, the
/// values as stored).
pub fn gather_kv_ref(image: &[f32], width: usize, slots: &[u32]) -> Vec<f32> {
    slots
        .iter()
        .flat_map(|&s| image[s as usize * width..][..width].iter().copied())
        .collect()
}
