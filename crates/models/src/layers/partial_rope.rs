//! Partial rotary embedding (GLM: `partial_rotary_factor`): only the
//! first `rotary_dim` dimensions of each head rotate (rotate-half within
//! them), the rest pass through, as transformers' `apply_rotary_pos_emb`
//! with a shorter `cos`/`sin`.
//!
//! The backend's rope op rotates whole heads, so the rotating parts are
//! gathered into `[n, heads*rotary_dim]` on the host, rotated by the op as
//! heads of `rotary_dim`, and scattered back. (A device-side strided rope
//! would avoid the round trip; on the CPU it is a copy.)

use mm_core::{Device, Error, Result, Tensor};

/// Rotates the first `rotary_dim` dimensions of every head of
/// `x[n, heads*head_dim]` (`dims = (head_dim, rotary_dim)`) by its row's
/// position with `inv_freq[rotary_dim/2]`, cos and sin multiplied by
/// `attention_factor` (YaRN's; 1 otherwise).
pub(super) fn forward(
    x: &Tensor,
    (head_dim, rotary_dim): (usize, usize),
    positions: &[u32],
    inv_freq: &[f32],
    attention_factor: f32,
    device: &Device,
) -> Result<Tensor> {
    let (n, width) = x.dims2()?;
    if head_dim == 0 || rotary_dim > head_dim || !width.is_multiple_of(head_dim) {
        return Err(Error::Invalid(format!(
            "partial rope: x {:?}, head_dim {head_dim}, rotary_dim {rotary_dim}",
            x.shape()
        )));
    }
    let heads = width / head_dim;
    let xs = x.to_vec()?;
    let mut rot = Vec::with_capacity(n * heads * rotary_dim);
    for head in xs.chunks_exact(head_dim) {
        rot.extend_from_slice(&head[..rotary_dim]);
    }
    let rot = device.upload(&Tensor::from_vec(vec![n, heads * rotary_dim], rot)?)?;
    let rot = device
        .rope(&rot, rotary_dim, positions, inv_freq, attention_factor)?
        .to_vec()?;
    let mut out = xs;
    for (head, r) in out
        .chunks_exact_mut(head_dim)
        .zip(rot.chunks_exact(rotary_dim))
    {
        head[..rotary_dim].copy_from_slice(r);
    }
    device.upload(&Tensor::from_vec(vec![n, width], out)?)
}
