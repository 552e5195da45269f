//! The experts of a GGUF file, from the keys llama.cpp writes and reads,
//! with llama.cpp's defaults:
//!
//! | key (`{arch}.`) | `llama` (Mixtral) | `qwen3moe` | `glm4moe` | `deepseek2` |
//! | --- | --- | --- | --- | --- |
//! | `expert_count`, `expert_used_count` | required | required | required | required |
//! | `expert_feed_forward_length` | `feed_forward_length` | required | required | required |
//! | `expert_shared_count` | none | none | required | required |
//! | `expert_gating_func` (1 softmax, 2 sigmoid) | softmax | softmax | sigmoid | sigmoid if the file has `exp_probs_b`, else softmax |
//! | `expert_weights_norm` | true | true | false | false |
//! | `expert_weights_scale` (0: none) | 1 | 1 | 1 | 1 |
//! | `expert_group_count`, `expert_group_used_count` | 1 | 1 | 1 | 1 |
//!
//! llama.cpp's `llama` and `qwen3moe` graphs always renormalise the chosen
//! experts' weights (an explicit `expert_weights_norm` is honoured).
//! `deepseek2` files without a gating function are DeepSeek-V2 (softmax),
//! or sigmoid-routed models whose converter did not write it (GLM-4.7-Flash,
//! which llama.cpp recognises by its layer count and vocabulary); the
//! correction bias `exp_probs_b` that every sigmoid-routed DeepSeek-family
//! model has tells them apart. Groups are scored as transformers does:
//! by their best expert under softmax (DeepSeek-V2's
//! `group_limited_greedy`), by the sum of their two best under sigmoid
//! (`noaux_tc`; llama.cpp uses the latter for both).
//!
//! Sparse layers are the ones with a router tensor; a
//! `leading_dense_block_count` that says otherwise is an error.

use mm_core::Result;

use super::super::gguf::Meta;
use super::{Arch, GroupScore, MoeConfig, MoeScoring};

/// The router tensor of layer `l`.
fn router(l: usize) -> String {
    format!("blk.{l}.ffn_gate_inp.weight")
}

/// The MoE config of a GGUF file of `arch` (None when no layer has
/// experts and the architecture allows that); `dense_ff` is
/// `feed_forward_length`.
pub(in crate::config) fn from_gguf(
    m: &Meta,
    arch: Arch,
    num_layers: usize,
    dense_ff: usize,
) -> Result<Option<MoeConfig>> {
    let moe_arch = matches!(
        arch,
        Arch::Mixtral | Arch::Qwen3Moe | Arch::Glm4Moe | Arch::DeepseekV2
    );
    let sparse_layers: Vec<bool> = (0..num_layers).map(|l| m.has(&router(l))).collect();
    let Some(first) = sparse_layers.iter().position(|&s| s) else {
        return match arch {
            Arch::Mixtral | Arch::Qwen3Moe | Arch::Glm4Moe => Err(m.fail(format!(
                "a {} model needs experts, but no layer has a router ('{}')",
                m.arch,
                router(0)
            ))),
            _ => Ok(None),
        };
    };
    if !moe_arch {
        return Err(m.fail(format!(
            "'{}' is a mixture-of-experts router, which a {} model does not have",
            router(first),
            m.arch
        )));
    }
    if let Some(k) = m.usize_opt("leading_dense_block_count")? {
        if let Some(l) = (0..num_layers).find(|&l| sparse_layers[l] != (l >= k)) {
            return Err(m.fail(format!(
                "metadata '{}' = {k} makes layer {l} {}, but the file {} '{}'",
                m.key("leading_dense_block_count"),
                if l >= k { "a MoE layer" } else { "dense" },
                if sparse_layers[l] {
                    "has its router"
                } else {
                    "has no router"
                },
                router(l)
            )));
        }
    }

    let shared_key = "expert_shared_count";
    let shared = if matches!(arch, Arch::Glm4Moe | Arch::DeepseekV2) {
        m.usize_req(shared_key)?
    } else {
        let shexp = format!("blk.{first}.ffn_gate_shexp.weight");
        if m.has(&shexp) || m.usize_opt(shared_key)?.unwrap_or(0) > 0 {
            return Err(m.fail(format!(
                "shared experts ('{shexp}', '{}') are not supported for {}",
                m.key(shared_key),
                m.arch
            )));
        }
        0
    };
    let expert_ff = match arch {
        Arch::Mixtral => m
            .usize_opt("expert_feed_forward_length")?
            .unwrap_or(dense_ff),
        _ => m.usize_req("expert_feed_forward_length")?,
    };

    let gating_key = "expert_gating_func";
    let scoring = match m.usize_opt(gating_key)? {
        Some(1) => MoeScoring::Softmax,
        Some(2) => MoeScoring::Sigmoid,
        Some(g) => {
            return Err(m.fail(format!(
                "metadata '{}' = {g} is not supported (1 softmax, 2 sigmoid)",
                m.key(gating_key)
            )))
        }
        None => match arch {
            Arch::Glm4Moe => MoeScoring::Sigmoid,
            Arch::DeepseekV2 if m.has(&format!("blk.{first}.exp_probs_b.bias")) => {
                MoeScoring::Sigmoid
            }
            _ => MoeScoring::Softmax,
        },
    };
    let want = match arch {
        Arch::Mixtral | Arch::Qwen3Moe => Some(MoeScoring::Softmax),
        Arch::Glm4Moe => Some(MoeScoring::Sigmoid),
        _ => None,
    };
    if want.is_some_and(|w| w != scoring) {
        return Err(m.fail(format!(
            "metadata '{}' must be {} for {}",
            m.key(gating_key),
            if want == Some(MoeScoring::Softmax) {
                "softmax (1)"
            } else {
                "sigmoid (2)"
            },
            m.arch
        )));
    }
    let norm = m
        .bool_opt("expert_weights_norm")?
        .unwrap_or(matches!(arch, Arch::Mixtral | Arch::Qwen3Moe));
    if arch == Arch::DeepseekV2 && scoring == MoeScoring::Softmax && norm {
        return Err(m.fail(format!(
            "metadata '{}' = true with softmax routing is not supported: transformers' \
             DeepSeek-V2 ignores it, DeepSeek's own code renormalises",
            m.key("expert_weights_norm")
        )));
    }
    let scale = match m.f32_opt("expert_weights_scale")? {
        // llama.cpp skips the scaling when the key is absent or 0.
        None => 1.0,
        Some(0.0) => 1.0,
        Some(s) => s,
    };
    let n_group = m.usize_opt("expert_group_count")?.unwrap_or(0).max(1);
    let topk_group = m.usize_opt("expert_group_used_count")?.unwrap_or(0).max(1);
    if n_group > 1 && matches!(arch, Arch::Mixtral | Arch::Qwen3Moe) {
        return Err(m.fail(format!(
            "expert groups ('{}' = {n_group}) are not supported for {}",
            m.key("expert_group_count"),
            m.arch
        )));
    }
    let c = MoeConfig {
        num_experts: m.usize_req("expert_count")?,
        experts_per_token: m.usize_req("expert_used_count")?,
        expert_intermediate_size: expert_ff,
        norm_topk_prob: norm,
        scoring,
        correction_bias: scoring == MoeScoring::Sigmoid,
        routed_scaling_factor: scale,
        n_group,
        topk_group,
        group_score: match scoring {
            MoeScoring::Softmax => GroupScore::Max,
            MoeScoring::Sigmoid => GroupScore::Top2Sum,
        },
        shared_experts: shared,
        shared_intermediate_size: expert_ff * shared,
        sparse_layers,
    };
    c.validate().map_err(|e| m.fail(format!("experts: {e}")))?;
    Ok(Some(c))
}
