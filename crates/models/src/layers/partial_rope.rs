//! Partial rotary embedding (GLM: `partial_rotary_factor`): only the
//! first `rotary_dim` dimensions of each head rotate (rotate-half within
//! them), the rest pass through, as transformers' `apply_rotary_pos_emb`
//! with a shorter `cos`/`sin`.
//!
//! The backend's rope op rotates whole heads, so each head's rotating
//! part is cut out on the device ([`Device::slice_cols`]), rotated by the
//! op as heads of `rotary_dim`, and put back in front of the pass-through
//! part ([`Device::concat_cols`]): nothing crosses to the host, so a
//! decode step stays replayable.

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
    let (_, width) = x.dims2()?;
    if head_dim == 0 || rotary_dim > head_dim || !width.is_multiple_of(head_dim) {
        return Err(Error::Invalid(format!(
            "partial rope: x {:?}, head_dim {head_dim}, rotary_dim {rotary_dim}",
            x.shape()
        )));
    }
    let heads = width / head_dim;
    let rot = device.slice_cols(x, heads, 0, rotary_dim, false)?;
    let rot = device.rope(&rot, rotary_dim, positions, inv_freq, attention_factor)?;
    let pass = device.slice_cols(x, heads, rotary_dim, head_dim - rotary_dim, false)?;
    device.concat_cols(&rot, &pass, heads, heads)
}
