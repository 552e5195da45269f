//! Mixtral: Mistral attention (sliding window when the config sets one)
//! and in every layer softmax top-k experts, always renormalised; experts
//! are named `w1` (gate), `w3` (up), `w2` (down).

use mm_core::{Device, Result};
use mm_formats::WeightSource;

use crate::layers::MoeNames;
use crate::DecoderModel;

/// `model.layers.N.block_sparse_moe.gate.weight` (router),
/// `model.layers.N.block_sparse_moe.experts.E.{w1,w3,w2}.weight`.
pub const MOE_NAMES: MoeNames = MoeNames {
    block: "block_sparse_moe",
    router: "gate",
    gate: "w1",
    up: "w3",
    down: "w2",
    shared: "shared_experts",
};

/// The attention of [`crate::mistral`]; the feed-forwards follow the config.
pub fn build(
    src: &dyn WeightSource,
    device: &Device,
    progress: &dyn Fn(usize, usize),
) -> Result<DecoderModel> {
    crate::mistral::build(src, device, progress)
}
