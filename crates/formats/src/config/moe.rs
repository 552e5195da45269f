//! Mixture-of-experts hyper-parameters: what routing needs and which layers
//! are sparse, read from (and written back to) the keys each HF
//! architecture uses.
//!
//! | arch | experts | dense layers | routing |
//! | --- | --- | --- | --- |
//! | `Qwen3MoeForCausalLM` | `num_experts`, `moe_intermediate_size` | `mlp_only_layers`, `decoder_sparse_step` | softmax, `norm_topk_prob` |
//! | `MixtralForCausalLM` | `num_local_experts`, `intermediate_size` | none | softmax, always renormalised |
//! | `Glm4MoeForCausalLM` | `n_routed_experts`, `moe_intermediate_size`, `n_shared_experts` | `first_k_dense_replace` | sigmoid + `e_score_correction_bias`, `n_group`/`topk_group` (group score: sum of its top 2), `norm_topk_prob`, `routed_scaling_factor` |
//! | `DeepseekV2ForCausalLM` | as GLM-4-MoE | `first_k_dense_replace` | softmax, `topk_method` greedy or `group_limited_greedy` (group score: its best), `routed_scaling_factor`, never renormalised |
//! | `DeepseekV3ForCausalLM` | as GLM-4-MoE | `first_k_dense_replace` | as GLM-4-MoE (`noaux_tc`) |
//! | `Glm4MoeLiteForCausalLM` | as GLM-4-MoE | `mlp_layer_types` | as GLM-4-MoE (`noaux_tc`) |
//!
//! The DeepSeek family's fields are read in [`deepseek`]; the same
//! hyper-parameters from GGUF metadata in [`gguf`](self::gguf).
//!
//! A child of `config` so it reads JSON through the parent's [`Obj`]
//! (messages name the field).

use mm_core::{Result, RouterParams};
use serde_json::{json, Map, Value};

use super::{cfg_err, f32_json, Arch, ModelConfig, Obj};

mod deepseek;
mod gguf;
pub(super) use self::gguf::from_gguf;

pub use mm_core::router::{GroupScore, MoeScoring};

/// The routed and shared experts of a MoE model.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    /// Routed experts per MoE layer.
    pub num_experts: usize,
    /// Experts each token is sent to (top-k).
    pub experts_per_token: usize,
    /// Intermediate width of one routed expert's SwiGLU.
    pub expert_intermediate_size: usize,
    /// Divide the chosen experts' weights by their sum.
    pub norm_topk_prob: bool,
    pub scoring: MoeScoring,
    /// The router has an `e_score_correction_bias[num_experts]` added to the
    /// scores for choosing experts only (weights use the unbiased scores).
    pub correction_bias: bool,
    /// Multiplies the routed experts' weights (after renormalising).
    pub routed_scaling_factor: f32,
    /// Expert groups (1: no group limit); experts are split into `n_group`
    /// consecutive groups and only the best `topk_group` groups compete.
    pub n_group: usize,
    pub topk_group: usize,
    pub group_score: GroupScore,
    /// Shared experts (always applied), merged into one SwiGLU of
    /// `shared_intermediate_size` (0 when there are none).
    pub shared_experts: usize,
    pub shared_intermediate_size: usize,
    /// Per layer: `true` when its feed-forward is the MoE block, `false`
    /// when it is a dense MLP of `intermediate_size`.
    pub sparse_layers: Vec<bool>,
}

impl MoeConfig {
    /// The routing rule of this model's MoE layers.
    pub fn router_params(&self) -> RouterParams {
        RouterParams {
            num_experts: self.num_experts,
            top_k: self.experts_per_token,
            scoring: self.scoring,
            norm_topk_prob: self.norm_topk_prob,
            routed_scaling_factor: self.routed_scaling_factor,
            n_group: self.n_group,
            topk_group: self.topk_group,
            group_score: self.group_score,
        }
    }
}

/// Reads the MoE fields of `arch` (None for dense architectures), for a
/// model of `num_layers` layers.
pub(super) fn from_hf(o: &Obj, arch: Arch, num_layers: usize) -> Result<Option<MoeConfig>> {
    let c = match arch {
        Arch::Llama | Arch::Mistral | Arch::Qwen2 | Arch::Qwen3 => return Ok(None),
        Arch::DeepseekV2 | Arch::DeepseekV3 | Arch::Glm4MoeLite => {
            match deepseek::from_hf(o, arch, num_layers)? {
                Some(c) => c,
                None => return Ok(None),
            }
        }
        Arch::Qwen3Moe => {
            let step = o.usize_opt("decoder_sparse_step")?.unwrap_or(1);
            if step == 0 {
                return Err(cfg_err("field 'decoder_sparse_step' must be positive"));
            }
            let dense = layer_list(o, "mlp_only_layers", num_layers)?;
            // transformers 5 writes `num_local_experts`, released
            // checkpoints `num_experts`.
            let num_experts = match o.usize_opt("num_experts")? {
                Some(e) => e,
                None => o.usize_opt("num_local_experts")?.ok_or_else(|| {
                    cfg_err("missing field 'num_experts' (or 'num_local_experts')")
                })?,
            };
            MoeConfig {
                num_experts,
                experts_per_token: o.usize_req("num_experts_per_tok")?,
                expert_intermediate_size: o.usize_req("moe_intermediate_size")?,
                norm_topk_prob: o.bool_opt("norm_topk_prob")?.unwrap_or(false),
                scoring: MoeScoring::Softmax,
                correction_bias: false,
                routed_scaling_factor: 1.0,
                n_group: 1,
                topk_group: 1,
                group_score: GroupScore::Max,
                shared_experts: 0,
                shared_intermediate_size: 0,
                // transformers: sparse unless listed, and (i + 1) % step == 0.
                sparse_layers: (0..num_layers)
                    .map(|i| num_experts > 0 && !dense.contains(&i) && (i + 1) % step == 0)
                    .collect(),
            }
        }
        Arch::Mixtral => MoeConfig {
            num_experts: o.usize_req("num_local_experts")?,
            experts_per_token: o.usize_req("num_experts_per_tok")?,
            expert_intermediate_size: o.usize_req("intermediate_size")?,
            norm_topk_prob: true,
            scoring: MoeScoring::Softmax,
            correction_bias: false,
            routed_scaling_factor: 1.0,
            n_group: 1,
            topk_group: 1,
            group_score: GroupScore::Max,
            shared_experts: 0,
            shared_intermediate_size: 0,
            sparse_layers: vec![true; num_layers],
        },
        Arch::Glm4Moe => {
            let inter = o.usize_req("moe_intermediate_size")?;
            let shared = o.usize_opt("n_shared_experts")?.unwrap_or(1);
            let first_dense = o.usize_opt("first_k_dense_replace")?.unwrap_or(1);
            MoeConfig {
                num_experts: o.usize_req("n_routed_experts")?,
                experts_per_token: o.usize_req("num_experts_per_tok")?,
                expert_intermediate_size: inter,
                norm_topk_prob: o.bool_opt("norm_topk_prob")?.unwrap_or(true),
                scoring: MoeScoring::Sigmoid,
                correction_bias: true,
                routed_scaling_factor: o.f32_opt("routed_scaling_factor")?.unwrap_or(1.0),
                n_group: o.usize_opt("n_group")?.unwrap_or(1),
                topk_group: o.usize_opt("topk_group")?.unwrap_or(1),
                group_score: GroupScore::Top2Sum,
                shared_experts: shared,
                shared_intermediate_size: inter * shared,
                sparse_layers: (0..num_layers).map(|i| i >= first_dense).collect(),
            }
        }
    };
    if let Some(act) = o.str_opt("scoring_func")? {
        let want = match c.scoring {
            MoeScoring::Softmax => "softmax",
            MoeScoring::Sigmoid => "sigmoid",
        };
        if act != want {
            return Err(cfg_err(format!(
                "field 'scoring_func' must be '{want}' for this architecture, found '{act}'"
            )));
        }
    }
    c.validate()?;
    Ok(Some(c))
}

/// A list of layer indices (`mlp_only_layers`), each below `num_layers`.
fn layer_list(o: &Obj, key: &str, num_layers: usize) -> Result<Vec<usize>> {
    let Some(v) = o.get(key) else {
        return Ok(Vec::new());
    };
    let bad = || o.bad(key, "a list of layer indices", v);
    let list = v.as_array().ok_or_else(bad)?;
    list.iter()
        .map(|x| {
            let i = x.as_u64().ok_or_else(bad)? as usize;
            if i >= num_layers {
                return Err(cfg_err(format!(
                    "field '{key}' names layer {i}, but the model has {num_layers} layers"
                )));
            }
            Ok(i)
        })
        .collect()
}

/// The rotary width of a head of `head_dim` from `partial_rotary_factor`
/// (in `rope_parameters` as transformers 5 writes it, or top-level as
/// older configs do; GLM-4-MoE defaults to 0.5): None for the whole head.
/// Truncated as transformers does (`int(head_dim * factor)`).
pub(super) fn hf_rotary_dim(o: &Obj, arch: Arch, head_dim: usize) -> Result<Option<usize>> {
    let key = "partial_rotary_factor";
    let nested = match o.get("rope_parameters") {
        Some(Value::Object(p)) => p.get(key).filter(|v| !v.is_null()),
        _ => None,
    };
    let f = match nested.or_else(|| o.get(key)) {
        Some(v) => v
            .as_f64()
            .filter(|f| f.is_finite() && *f > 0.0 && *f <= 1.0)
            .ok_or_else(|| o.bad(key, "a number in (0, 1]", v))?,
        None if arch == Arch::Glm4Moe => 0.5,
        None => return Ok(None),
    };
    let r = head_dim as f64 * f;
    // Factors written as r / head_dim may land a hair under r.
    let r = if (r - r.round()).abs() < 1e-9 {
        r.round()
    } else {
        r.floor()
    } as usize;
    if r == 0 || !r.is_multiple_of(2) {
        return Err(cfg_err(format!(
            "field '{key}' {f} gives {r} rotary dimensions of head_dim {head_dim}; RoPE needs a positive even number"
        )));
    }
    Ok((r != head_dim).then_some(r))
}

/// Writes the fields of `c` this module reads (experts, dense layers,
/// partial rotary, GLM's q/k norm flag) into a `config.json` object so
/// that the parser reads back an equal config.
pub(super) fn to_hf(c: &ModelConfig, m: &mut Map<String, Value>) {
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    if c.rotary_dim.is_some() || c.arch == Arch::Glm4Moe {
        let r = c.rotary_dim.unwrap_or(c.head_dim);
        put("partial_rotary_factor", json!(r as f64 / c.head_dim as f64));
    }
    if c.arch == Arch::Glm4Moe {
        put("use_qk_norm", json!(c.qk_norm));
    }
    if matches!(
        c.arch,
        Arch::DeepseekV2 | Arch::DeepseekV3 | Arch::Glm4MoeLite
    ) {
        deepseek::to_hf(c, &mut put);
        return;
    }
    let (Some(moe), arch) = (&c.moe, c.arch) else {
        return;
    };
    let c = moe;
    put("num_experts_per_tok", json!(c.experts_per_token));
    match arch {
        Arch::Qwen3Moe => {
            put("num_experts", json!(c.num_experts));
            put("moe_intermediate_size", json!(c.expert_intermediate_size));
            put("norm_topk_prob", json!(c.norm_topk_prob));
            put("decoder_sparse_step", json!(1));
            let dense: Vec<usize> = (0..c.sparse_layers.len())
                .filter(|&i| !c.sparse_layers[i])
                .collect();
            put("mlp_only_layers", json!(dense));
        }
        Arch::Mixtral => {
            put("num_local_experts", json!(c.num_experts));
        }
        Arch::Glm4Moe => {
            put("n_routed_experts", json!(c.num_experts));
            put("moe_intermediate_size", json!(c.expert_intermediate_size));
            put("norm_topk_prob", json!(c.norm_topk_prob));
            put("routed_scaling_factor", f32_json(c.routed_scaling_factor));
            put("n_group", json!(c.n_group));
            put("topk_group", json!(c.topk_group));
            put("n_shared_experts", json!(c.shared_experts));
            let first = c.sparse_layers.iter().take_while(|s| !**s).count();
            put("first_k_dense_replace", json!(first));
        }
        Arch::Llama
        | Arch::Mistral
        | Arch::Qwen2
        | Arch::Qwen3
        | Arch::DeepseekV2
        | Arch::DeepseekV3
        | Arch::Glm4MoeLite => {}
    }
}

/// Checks the fields of `c` this module owns.
pub(super) fn validate(c: &ModelConfig) -> Result<()> {
    if let Some(r) = c.rotary_dim {
        if r == 0 || !r.is_multiple_of(2) || r > c.head_dim {
            return Err(cfg_err(format!(
                "rotary_dim {r} must be a positive even number at most head_dim {}",
                c.head_dim
            )));
        }
    }
    if let Some(m) = &c.moe {
        m.validate()?;
        if m.sparse_layers.len() != c.num_layers {
            return Err(cfg_err(format!(
                "the MoE layer pattern has {} layers, the model {}",
                m.sparse_layers.len(),
                c.num_layers
            )));
        }
    }
    Ok(())
}

impl MoeConfig {
    /// Checks the values are usable together.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("num_experts", self.num_experts),
            ("num_experts_per_tok", self.experts_per_token),
            ("moe_intermediate_size", self.expert_intermediate_size),
            ("n_group", self.n_group),
            ("topk_group", self.topk_group),
        ] {
            if v == 0 {
                return Err(cfg_err(format!("field '{name}' must be positive")));
            }
        }
        if self.experts_per_token > self.num_experts {
            return Err(cfg_err(format!(
                "field 'num_experts_per_tok' ({}) exceeds the number of experts ({})",
                self.experts_per_token, self.num_experts
            )));
        }
        if !self.num_experts.is_multiple_of(self.n_group) {
            return Err(cfg_err(format!(
                "field 'n_group' ({}) does not divide the number of experts ({})",
                self.n_group, self.num_experts
            )));
        }
        if self.topk_group > self.n_group {
            return Err(cfg_err(format!(
                "field 'topk_group' ({}) exceeds 'n_group' ({})",
                self.topk_group, self.n_group
            )));
        }
        let per_group = self.num_experts / self.n_group;
        if self.topk_group * per_group < self.experts_per_token {
            return Err(cfg_err(format!(
                "'topk_group' {} groups of {per_group} experts hold fewer than 'num_experts_per_tok' {}",
                self.topk_group, self.experts_per_token
            )));
        }
        if self.n_group > 1 && self.group_score == GroupScore::Top2Sum && per_group < 2 {
            return Err(cfg_err(format!(
                "groups of {per_group} expert (n_group {}) cannot be scored by their two best experts",
                self.n_group
            )));
        }
        if !(self.routed_scaling_factor.is_finite() && self.routed_scaling_factor > 0.0) {
            return Err(cfg_err(format!(
                "field 'routed_scaling_factor' must be positive, found {}",
                self.routed_scaling_factor
            )));
        }
        Ok(())
    }

    /// Whether layer `l` has the MoE block (else a dense MLP).
    pub fn is_sparse(&self, l: usize) -> bool {
        self.sparse_layers.get(l).copied().unwrap_or(false)
    }
}
