//! DeepSeek-V3: DeepSeek-V2's layer with the RoPE layout chosen by
//! `rope_interleave` and YaRN's `mscale` in the softmax scale (both in
//! `layers::mla`). MoE layers are refused until they are supported.

use mm_core::{Device, Result};
use mm_formats::WeightSource;

use crate::layers::AttentionOptions;
use crate::DecoderModel;

pub fn build(
    src: &dyn WeightSource,
    device: &Device,
    progress: &dyn Fn(usize, usize),
) -> Result<DecoderModel> {
    crate::deepseek_v2::refuse_moe(src)?;
    DecoderModel::load(src, device, AttentionOptions::default(), progress)
}
