//! Layers shared by every architecture.

pub mod attention;
pub mod ffn;
pub mod linear;
pub mod mla;
pub mod mlp;
pub mod moe;
pub mod norm;
mod partial_rope;
pub mod rope;
pub mod self_attention;
mod yarn;

pub use attention::{Attention, AttentionOptions};
pub use ffn::Ffn;
pub use linear::{Linear, LinearObserver};
pub use mla::{Mla, MlaForm};
pub use mlp::Mlp;
pub use moe::{Moe, MoeNames};
pub use norm::RmsNorm;
pub use rope::Rope;
pub use self_attention::SelfAttention;

use mm_core::Tensor;

/// A weight that must be a small dense vector (norm weights, biases),
/// converted to an f32 tensor on the device, with its stored size in bytes.
pub(crate) fn vector(
    src: &dyn mm_formats::WeightSource,
    name: &str,
    len: usize,
    device: &mm_core::Device,
) -> mm_core::Result<(Tensor, usize)> {
    let w = src.tensor(name)?;
    if w.numel() != len {
        return Err(mm_core::Error::Shape {
            name: name.into(),
            expected: vec![len],
            found: w.shape.clone(),
        });
    }
    let t = device.upload(&Tensor::from_vec(vec![len], mm_quant::dequantize_ref(&w)?)?)?;
    Ok((t, w.stored_bytes()))
}
