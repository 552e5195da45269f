//! Qwen3-MoE: Qwen3 attention (per-head q/k RMSNorm, explicit head_dim)
//! and softmax-routed experts (`norm_topk_prob` renormalises the top-k),
//! no shared expert; the layers in `mlp_only_layers` (and those off the
//! `decoder_sparse_step`) keep a dense MLP.

use mm_core::{Device, Result};
use mm_formats::WeightSource;

use crate::layers::MoeNames;
use crate::DecoderModel;

/// `model.layers.N.mlp.gate.weight` (router),
/// `model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight`.
pub const MOE_NAMES: MoeNames = MoeNames {
    block: "mlp",
    router: "gate",
    gate: "gate_proj",
    up: "up_proj",
    down: "down_proj",
    shared: "shared_experts",
};

/// The attention of [`crate::qwen3`]; the feed-forwards follow the config.
pub fn build(
    src: &dyn WeightSource,
    device: &Device,
    progress: &dyn Fn(usize, usize),
) -> Result<DecoderModel> {
    crate::qwen3::build(src, device, progress)
}
