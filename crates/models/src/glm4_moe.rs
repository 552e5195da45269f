//! GLM-4.5/4.6/4.7 (`Glm4MoeForCausalLM`): GQA with q/k/v biases
//! (`attention_bias`), optional per-head q/k RMSNorm (`use_qk_norm`),
//! rotary embedding on the first `partial_rotary_factor` of each head
//! (rotate-half within that part); the first `first_k_dense_replace`
//! layers dense, the others sigmoid-routed experts with
//! `e_score_correction_bias`, group-limited top-k, renormalisation,
//! `routed_scaling_factor`, plus the shared experts. The checkpoint's
//! multi-token-prediction layers (past `num_hidden_layers`) are not loaded.

use mm_core::{Device, Result};
use mm_formats::WeightSource;

use crate::layers::{AttentionOptions, MoeNames};
use crate::DecoderModel;

/// `model.layers.N.mlp.gate.weight` (router) and
/// `.gate.e_score_correction_bias`,
/// `model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight`,
/// `model.layers.N.mlp.shared_experts.{gate,up,down}_proj.weight`.
pub const MOE_NAMES: MoeNames = crate::qwen3_moe::MOE_NAMES;

pub fn build(
    src: &dyn WeightSource,
    device: &Device,
    progress: &dyn Fn(usize, usize),
) -> Result<DecoderModel> {
    let c = src.config();
    let opt = AttentionOptions {
        qkv_bias: c.attention_bias,
        qk_norm: c.qk_norm,
    };
    DecoderModel::load(src, device, opt, progress)
}
