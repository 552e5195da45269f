//! Multi-head latent attention (DeepSeek-V2/V3, GLM-4.7-Flash) and the YaRN
//! RoPE scaling their configs use, as transformers 5 reads them
//! (`configuration_deepseek_v2.py`, `configuration_deepseek_v3.py`,
//! `configuration_glm4_moe_lite.py`, `modeling_rope_utils.py`).
//!
//! These models are also mixtures of experts; their MoE fields are not
//! read here (a checkpoint's MoE layers are refused when the model loads).

use mm_core::Result;
use serde_json::{json, Map, Value};

use super::{cfg_err, f32_json, Arch, ModelConfig, Obj, RopeScaling};

/// The attention shape of an MLA model.
///
/// Per head, a query is `qk_nope_head_dim` position-free values and
/// `qk_rope_head_dim` rotated ones; keys and values come from one shared
/// latent of `kv_lora_rank` values per token (normalised by
/// `kv_a_layernorm`) through `kv_b_proj`, the rotated key part from one
/// `qk_rope_head_dim` vector per token shared by every head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlaConfig {
    /// Rank of the query compression (`q_a_proj` → `q_a_layernorm` →
    /// `q_b_proj`); `None`: one `q_proj`.
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    /// The rotated dimensions come in interleaved pairs `(x0, x1), (x2,
    /// x3), …` (DeepSeek's layout; always so for DeepSeek-V2, whose
    /// transformers code rotates them as complex numbers); `false`: the
    /// rotate-half layout of Llama.
    pub rope_interleave: bool,
}

impl MlaConfig {
    /// Width of a query/key head: `qk_nope_head_dim + qk_rope_head_dim`.
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Values the paged cache keeps per token and layer: the latent and the
    /// rotated key (576 for DeepSeek-V3 and GLM-4.7-Flash).
    pub fn cache_width(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }
}

impl ModelConfig {
    /// Values a token's KV-cache row holds per layer: `(keys, values)`;
    /// kv heads × head dim each, or for multi-head latent attention the
    /// latent and rotated key ([`MlaConfig::cache_width`]) and no values.
    pub fn kv_widths(&self) -> (usize, usize) {
        match &self.mla {
            Some(m) => (m.cache_width(), 0),
            None => {
                let w = self.num_kv_heads * self.head_dim;
                (w, w)
            }
        }
    }
}

/// Whether `arch` uses multi-head latent attention.
pub fn is_mla(arch: Arch) -> bool {
    matches!(
        arch,
        Arch::DeepseekV2 | Arch::DeepseekV3 | Arch::Glm4MoeLite
    )
}

/// The MLA fields of an HF config of `arch` (None for other archs).
pub(super) fn parse(o: &Obj, arch: Arch) -> Result<Option<MlaConfig>> {
    if !is_mla(arch) {
        return Ok(None);
    }
    let positive = |key: &str| -> Result<usize> {
        let v = o.usize_req(key)?;
        if v == 0 {
            return Err(cfg_err(format!("field '{key}' must be positive")));
        }
        Ok(v)
    };
    let q_lora_rank = match o.usize_opt("q_lora_rank")? {
        Some(0) => return Err(cfg_err("field 'q_lora_rank' must be positive or null")),
        r => r,
    };
    let rope_interleave = match arch {
        Arch::DeepseekV2 => true,
        _ => o.bool_opt("rope_interleave")?.unwrap_or(true),
    };
    let c = MlaConfig {
        q_lora_rank,
        kv_lora_rank: positive("kv_lora_rank")?,
        qk_nope_head_dim: positive("qk_nope_head_dim")?,
        qk_rope_head_dim: positive("qk_rope_head_dim")?,
        v_head_dim: positive("v_head_dim")?,
        rope_interleave,
    };
    if c.qk_rope_head_dim % 2 != 0 {
        return Err(cfg_err(format!(
            "field 'qk_rope_head_dim' must be even for RoPE, found {}",
            c.qk_rope_head_dim
        )));
    }
    Ok(Some(c))
}

/// Writes the MLA fields as transformers names them.
pub(super) fn put_json(put: &mut impl FnMut(&str, Value), arch: Arch, c: &MlaConfig) {
    put("q_lora_rank", json!(c.q_lora_rank));
    put("kv_lora_rank", json!(c.kv_lora_rank));
    put("qk_nope_head_dim", json!(c.qk_nope_head_dim));
    put("qk_rope_head_dim", json!(c.qk_rope_head_dim));
    put("v_head_dim", json!(c.v_head_dim));
    if arch != Arch::DeepseekV2 {
        put("rope_interleave", json!(c.rope_interleave));
    }
}

/// A `"yarn"` rope scaling object (`modeling_rope_utils._compute_yarn_parameters`).
pub(super) fn parse_yarn(o: &Obj) -> Result<RopeScaling> {
    let factor = o.f32_req("factor")?;
    let original = o.usize_req("original_max_position_embeddings")?;
    let s = RopeScaling::Yarn {
        factor,
        original_max_position_embeddings: original,
        beta_fast: o.f32_opt("beta_fast")?.unwrap_or(32.0),
        beta_slow: o.f32_opt("beta_slow")?.unwrap_or(1.0),
        mscale: o.f32_opt("mscale")?,
        mscale_all_dim: o.f32_opt("mscale_all_dim")?,
        attention_factor: o.f32_opt("attention_factor")?,
        truncate: o.bool_opt("truncate")?.unwrap_or(true),
    };
    if factor.is_nan() || factor <= 0.0 || original == 0 {
        return Err(cfg_err(format!(
            "invalid yarn RoPE scaling in '{}': factor {factor}, original_max_position_embeddings {original}",
            o.ctx.trim_end_matches('.')
        )));
    }
    Ok(s)
}

/// The JSON object of a [`RopeScaling::Yarn`] (other variants: `None`).
pub(super) fn yarn_json(s: &RopeScaling) -> Option<Value> {
    let RopeScaling::Yarn {
        factor,
        original_max_position_embeddings,
        beta_fast,
        beta_slow,
        mscale,
        mscale_all_dim,
        attention_factor,
        truncate,
    } = s
    else {
        return None;
    };
    let mut m = Map::new();
    m.insert("rope_type".into(), json!("yarn"));
    m.insert("factor".into(), f32_json(*factor));
    m.insert(
        "original_max_position_embeddings".into(),
        json!(original_max_position_embeddings),
    );
    m.insert("beta_fast".into(), f32_json(*beta_fast));
    m.insert("beta_slow".into(), f32_json(*beta_slow));
    for (k, v) in [
        ("mscale", mscale),
        ("mscale_all_dim", mscale_all_dim),
        ("attention_factor", attention_factor),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), f32_json(*v));
        }
    }
    m.insert("truncate".into(), json!(truncate));
    Some(Value::Object(m))
}

/// YaRN's `0.1 · mscale · ln(scale) + 1` (1 for `scale ≤ 1`), in f64 as
/// Python computes it.
pub fn yarn_get_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}
