//! The MoE fields of the DeepSeek family (DeepSeek-V2, DeepSeek-V3,
//! GLM-4.7-Flash's `Glm4MoeLiteForCausalLM`) as transformers 5 reads them,
//! with its defaults for absent fields:
//!
//! * DeepSeek-V2: softmax scores; `topk_method` `greedy` (no groups) or
//!   `group_limited_greedy` (`n_group` groups scored by their best expert,
//!   the best `topk_group` compete); the weights times
//!   `routed_scaling_factor`, never renormalised (transformers ignores
//!   `norm_topk_prob`, DeepSeek's own code honours it: `true` is refused
//!   rather than guessed);
//! * DeepSeek-V3 and GLM-4.7-Flash (`noaux_tc`): sigmoid scores plus
//!   `e_score_correction_bias` for the choice, groups scored by the sum of
//!   their best two, `norm_topk_prob`, `routed_scaling_factor`;
//! * all: `n_shared_experts` shared experts of `moe_intermediate_size`
//!   each (one SwiGLU of their total width); the first
//!   `first_k_dense_replace` layers dense (DeepSeek), or the layers
//!   `mlp_layer_types` marks `dense` (GLM-4.7-Flash; by default only the
//!   first). `moe_layer_freq` other than 1 is refused: transformers
//!   ignores it.
//!
//! A model without a sparse layer has no MoE config (None): its MoE fields
//! are not read, as transformers builds no router for it.

use mm_core::Result;
use serde_json::{json, Value};

use super::super::{cfg_err, f32_json, Arch, ModelConfig, Obj};
use super::{GroupScore, MoeConfig, MoeScoring};

/// transformers' defaults: (routed experts, shared experts, expert width,
/// top-k, routed scaling factor, `n_group`, `topk_group`).
fn defaults(arch: Arch) -> (usize, usize, usize, Option<usize>, f32, usize, usize) {
    match arch {
        Arch::DeepseekV2 => (64, 2, 1407, None, 1.0, 1, 1),
        Arch::DeepseekV3 => (256, 1, 2048, Some(8), 2.5, 8, 4),
        _ => (64, 1, 1536, Some(4), 1.8, 1, 1),
    }
}

/// Which layers are sparse, as transformers decides it for `arch`.
fn layer_pattern(o: &Obj, arch: Arch, num_layers: usize) -> Result<Vec<bool>> {
    if let Some(v) = o.get("moe_layer_freq") {
        if v.as_u64() != Some(1) {
            return Err(o.bad(
                "moe_layer_freq",
                "1 (transformers makes every layer past 'first_k_dense_replace' sparse)",
                v,
            ));
        }
    }
    let first = o.usize_opt("first_k_dense_replace")?;
    if arch != Arch::Glm4MoeLite {
        let default = if arch == Arch::DeepseekV3 { 3 } else { 0 };
        let k = first.unwrap_or(default);
        return Ok((0..num_layers).map(|i| i >= k).collect());
    }
    let key = "mlp_layer_types";
    let pattern = match o.get(key) {
        None => (0..num_layers).map(|i| i >= 1).collect(),
        Some(v) => {
            let bad = || o.bad(key, "a list of 'dense' or 'sparse', one per layer", v);
            let list = v.as_array().ok_or_else(bad)?;
            if list.len() != num_layers {
                return Err(cfg_err(format!(
                    "field '{key}' has {} entries, the model {num_layers} layers",
                    list.len()
                )));
            }
            list.iter()
                .map(|x| match x.as_str() {
                    Some("dense") => Ok(false),
                    Some("sparse") => Ok(true),
                    _ => Err(bad()),
                })
                .collect::<Result<Vec<bool>>>()?
        }
    };
    // transformers reads only `mlp_layer_types`; a `first_k_dense_replace`
    // that says otherwise is a config that means two things.
    if let Some(k) = first {
        let same = pattern.iter().enumerate().all(|(i, &s)| s == (i >= k));
        if !same {
            return Err(cfg_err(format!(
                "field 'first_k_dense_replace' ({k}) disagrees with the layer pattern \
                 {key} ({pattern:?}) that transformers uses"
            )));
        }
    }
    Ok(pattern)
}

/// Reads the MoE config of a DeepSeek-family `arch` with `num_layers`
/// layers (None when no layer is sparse).
pub(super) fn from_hf(o: &Obj, arch: Arch, num_layers: usize) -> Result<Option<MoeConfig>> {
    let sparse_layers = layer_pattern(o, arch, num_layers)?;
    if !sparse_layers.contains(&true) {
        return Ok(None);
    }
    let (experts, shared, inter, top_k, scale, n_group, topk_group) = defaults(arch);
    let inter = o.usize_opt("moe_intermediate_size")?.unwrap_or(inter);
    let shared = o.usize_opt("n_shared_experts")?.unwrap_or(shared);
    let experts_per_token = match (o.usize_opt("num_experts_per_tok")?, top_k) {
        (Some(k), _) | (None, Some(k)) => k,
        (None, None) => return Err(cfg_err("missing field 'num_experts_per_tok'")),
    };
    let method = o.str_opt("topk_method")?;
    let (scoring, group_score, n_group, topk_group, norm) = if arch == Arch::DeepseekV2 {
        let (g, tg) = match method.unwrap_or("greedy") {
            "greedy" => (1, 1),
            "group_limited_greedy" => (o.usize_req("n_group")?, o.usize_req("topk_group")?),
            m => {
                return Err(cfg_err(format!(
                    "field 'topk_method' must be 'greedy' or 'group_limited_greedy', found '{m}'"
                )))
            }
        };
        if o.bool_opt("norm_topk_prob")? == Some(true) {
            return Err(cfg_err(
                "field 'norm_topk_prob' true is not supported for DeepseekV2ForCausalLM: \
                 transformers ignores it, DeepSeek's own code renormalises",
            ));
        }
        (MoeScoring::Softmax, GroupScore::Max, g, tg, false)
    } else {
        if let Some(m) = method.filter(|m| *m != "noaux_tc") {
            return Err(cfg_err(format!(
                "field 'topk_method' must be 'noaux_tc' for {arch:?}, found '{m}'"
            )));
        }
        (
            MoeScoring::Sigmoid,
            GroupScore::Top2Sum,
            o.usize_opt("n_group")?.unwrap_or(n_group),
            o.usize_opt("topk_group")?.unwrap_or(topk_group),
            o.bool_opt("norm_topk_prob")?.unwrap_or(true),
        )
    };
    Ok(Some(MoeConfig {
        num_experts: o.usize_opt("n_routed_experts")?.unwrap_or(experts),
        experts_per_token,
        expert_intermediate_size: inter,
        norm_topk_prob: norm,
        scoring,
        correction_bias: scoring == MoeScoring::Sigmoid,
        routed_scaling_factor: o.f32_opt("routed_scaling_factor")?.unwrap_or(scale),
        n_group,
        topk_group,
        group_score,
        shared_experts: shared,
        shared_intermediate_size: inter * shared,
        sparse_layers,
    }))
}

/// Writes what [`from_hf`] reads for `c` (a DeepSeek-family model), dense
/// models included (their layer pattern says every layer is dense).
pub(super) fn to_hf(c: &ModelConfig, put: &mut impl FnMut(&str, Value)) {
    let n = c.num_layers;
    let sparse = match &c.moe {
        Some(m) => m.sparse_layers.clone(),
        None => vec![false; n],
    };
    if c.arch == Arch::Glm4MoeLite {
        let types: Vec<&str> = sparse
            .iter()
            .map(|&s| if s { "sparse" } else { "dense" })
            .collect();
        put("mlp_layer_types", json!(types));
    } else {
        // The patterns DeepSeek configs can say: the first k layers dense.
        let first = sparse.iter().take_while(|s| !**s).count();
        put("first_k_dense_replace", json!(first));
    }
    let Some(m) = &c.moe else {
        return;
    };
    put("n_routed_experts", json!(m.num_experts));
    put("num_experts_per_tok", json!(m.experts_per_token));
    put("moe_intermediate_size", json!(m.expert_intermediate_size));
    put("n_shared_experts", json!(m.shared_experts));
    put("routed_scaling_factor", f32_json(m.routed_scaling_factor));
    put("n_group", json!(m.n_group));
    put("topk_group", json!(m.topk_group));
    put("norm_topk_prob", json!(m.norm_topk_prob));
    match c.arch {
        Arch::DeepseekV2 => {
            let method = if m.n_group > 1 {
                "group_limited_greedy"
            } else {
                "greedy"
            };
            put("topk_method", json!(method));
            put("scoring_func", json!("softmax"));
        }
        Arch::DeepseekV3 => {
            put("topk_method", json!("noaux_tc"));
            put("scoring_func", json!("sigmoid"));
        }
        _ => {}
    }
}
