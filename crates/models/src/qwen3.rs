//! Qwen3: per-head RMSNorm of q and k before RoPE, explicit head_dim,
//! optional attention biases.

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
        qkv_bias: src.config().attention_bias,
        qk_norm: true,
    };
    DecoderModel::load(src, device, opt, progress)
}
