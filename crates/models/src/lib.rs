//! Model architectures, built from shared layers.
//!
//! `layers/` holds the building blocks (linear op over any weight format,
//! RMSNorm, rotary embedding, grouped-query and multi-head latent
//! attention, MLP, mixture-of-experts feed-forward); `decoder.rs` the
//! pre-norm decoder stack; each architecture file (`llama.rs`,
//! `mistral.rs`, `qwen2.rs`, `qwen3.rs`, `qwen3_moe.rs`, `mixtral.rs`,
//! `glm4_moe.rs`, `deepseek_v2.rs`, `deepseek_v3.rs`, `glm4_moe_lite.rs`)
//! says how its checkpoints fill that stack.
//! Model code runs every op through [`mm_core::Device`] and never names a
//! backend.

pub mod decoder;
pub mod deepseek_v2;
pub mod deepseek_v3;
pub mod glm4_moe;
pub mod glm4_moe_lite;
pub mod kv_cache;
pub mod layers;
pub mod llama;
pub mod mistral;
pub mod mixtral;
pub mod npy;
pub mod qwen2;
pub mod qwen3;
pub mod qwen3_moe;

use mm_core::{Device, Result};
use mm_formats::{Arch, WeightSource};

pub use decoder::{DecoderModel, WeightSummary};
pub use kv_cache::{KvCache, PagedKv, Step, DEFAULT_BLOCK_SIZE};
pub use layers::{LinearObserver, MlaForm};

/// Builds the model described by `src.config()` on `device`;
/// `progress(done, total)` is called as layers load.
pub fn load_model(
    src: &dyn WeightSource,
    device: &Device,
    progress: &dyn Fn(usize, usize),
) -> Result<DecoderModel> {
    match src.config().arch {
        Arch::Llama => llama::build(src, device, progress),
        Arch::Mistral => mistral::build(src, device, progress),
        Arch::Qwen2 => qwen2::build(src, device, progress),
        Arch::Qwen3 => qwen3::build(src, device, progress),
        Arch::DeepseekV2 => deepseek_v2::build(src, device, progress),
        Arch::DeepseekV3 => deepseek_v3::build(src, device, progress),
        Arch::Glm4MoeLite => glm4_moe_lite::build(src, device, progress),
        Arch::Qwen3Moe => qwen3_moe::build(src, device, progress),
        Arch::Mixtral => mixtral::build(src, device, progress),
        Arch::Glm4Moe => glm4_moe::build(src, device, progress),
    }
}
