//! Qwen2/2.5: the Llama layout with biases on the q/k/v projections.

use mm_core::{Device, Result};
use mm_formats::WeightSource;

use crate::layers::AttentionOptions;
use crate::DecoderModel;

pub fn build(
    src: &dyn WeightSource,
    device: &Device,
    progress: &dyn Fn(usize, usize),
) -> Result<DecoderModel> {
    let opt = AttentionOptions {
        qkv_bias: true,
        qk_norm: false,
    };
    DecoderModel::load(src, device, opt, progress)
}
