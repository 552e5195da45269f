//! Llama 2/3/3.x and SmolLM/SmolLM2: pre-norm decoder, GQA, SwiGLU, no
//! attention biases, RoPE (optionally llama3- or linearly scaled).

use mm_core::{Device, Result};
use mm_formats::WeightSource;

use crate::layers::AttentionOptions;
use crate::DecoderModel;

pub fn build(
    src: &dyn WeightSource,
    device: &Device,
    progress: &dyn Fn(usize, usize),
) -> Result<DecoderModel> {
    DecoderModel::load(src, device, AttentionOptions::default(), progress)
}
