//! GLM-4.7-Flash (`Glm4MoeLiteForCausalLM`): DeepSeek-V3's multi-head
//! latent attention (q_lora 768, kv_lora 512, qk 192 + 64, v 256) and
//! SwiGLU feed-forwards; its MoE layers are refused until they are
//! supported.

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
