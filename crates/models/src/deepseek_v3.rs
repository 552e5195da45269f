//! DeepSeek-V3: DeepSeek-V2's layer with the RoPE layout chosen by
//! `rope_interleave` and YaRN's `mscale` in the softmax scale (both in
//! `layers::mla`); its MoE layers route by sigmoid scores plus
//! `e_score_correction_bias`, group-limited (a group scored by the sum of
//! its best two), renormalised and scaled by `routed_scaling_factor`, plus
//! the shared experts (tensor names: [`crate::deepseek_v2::MOE_NAMES`]).
//! The multi-token-prediction layers past `num_hidden_layers` are not
//! loaded.

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
