//! DeepSeek-V2: multi-head latent attention (`layers::mla`; RoPE on
//! interleaved pairs), SwiGLU feed-forwards. Its MoE layers are not
//! supported yet: a checkpoint with one is refused by name.

use mm_core::{Device, Error, Result};
use mm_formats::WeightSource;

use crate::layers::AttentionOptions;
use crate::DecoderModel;

pub fn build(
    src: &dyn WeightSource,
    device: &Device,
    progress: &dyn Fn(usize, usize),
) -> Result<DecoderModel> {
    refuse_moe(src)?;
    DecoderModel::load(src, device, AttentionOptions::default(), progress)
}

/// An error naming the first mixture-of-experts layer of the checkpoint
/// (a layer with a router, `mlp.gate.weight`), which the DeepSeek-family
/// models here cannot run yet.
pub(crate) fn refuse_moe(src: &dyn WeightSource) -> Result<()> {
    let c = src.config();
    match (0..c.num_layers).find(|i| src.contains(&format!("model.layers.{i}.mlp.gate.weight"))) {
        None => Ok(()),
        Some(i) => Err(Error::Config(format!(
            "{:?}: layer {i} is a mixture-of-experts layer (model.layers.{i}.mlp.gate.weight), \
             which is not supported yet; only dense layers run",
            c.arch
        ))),
    }
}
