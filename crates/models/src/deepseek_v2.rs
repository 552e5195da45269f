//! DeepSeek-V2: multi-head latent attention (`layers::mla`; RoPE on
//! interleaved pairs); the first `first_k_dense_replace` layers have a
//! dense SwiGLU, the others a mixture of experts (`layers::moe`): softmax
//! scores, greedy or group-limited top-k (a group scored by its best
//! expert), `routed_scaling_factor`, plus the shared experts.

use mm_core::{Device, Result};
use mm_formats::WeightSource;

use crate::layers::{AttentionOptions, MoeNames};
use crate::DecoderModel;

/// `model.layers.N.mlp.gate.weight` (router; `.gate.e_score_correction_bias`
/// for V3 and GLM-4.7-Flash),
/// `model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight`,
/// `model.layers.N.mlp.shared_experts.{gate,up,down}_proj.weight`: the
/// names of DeepSeek's checkpoints and of transformers' `save_pretrained`,
/// shared by DeepSeek-V3 and GLM-4.7-Flash.
pub const MOE_NAMES: MoeNames = crate::qwen3_moe::MOE_NAMES;

pub fn build(
    src: &dyn WeightSource,
    device: &Device,
    progress: &dyn Fn(usize, usize),
) -> Result<DecoderModel> {
    DecoderModel::load(src, device, AttentionOptions::default(), progress)
}
