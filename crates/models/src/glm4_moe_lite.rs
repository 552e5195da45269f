//! GLM-4.7-Flash (`Glm4MoeLiteForCausalLM`): DeepSeek-V3's multi-head
//! latent attention (q_lora 768, kv_lora 512, qk 192 + 64, v 256) and
//! DeepSeek-V3's routing (64 experts top-4, sigmoid + correction bias,
//! `routed_scaling_factor` 1.8, one shared expert); the layers
//! `mlp_layer_types` marks dense (the first) have a SwiGLU. Tensor names:
//! [`crate::deepseek_v2::MOE_NAMES`]; the multi-token-prediction layer is
//! not loaded.

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
