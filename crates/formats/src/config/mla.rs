//! Multi-head latent attention (DeepSeek-V2/V3, GLM-4.7-Flash) and the YaRN
//! RoPE scaling their configs use, as transformers 5 reads them
//! (`configuration_deepseek_v2.py`, `configuration_deepseek_v3.py`,
//! `configuration_glm4_moe_lite.py`, `modeling_rope_utils.py`).
//!
//! Also the same fields from a GGUF `deepseek2` file ([`from_gguf`],
//! [`yarn_from_gguf`]). These models are also mixtures of experts; their
//! MoE fields are read in `moe/`.

use mm_core::Result;
use serde_json::{json, Map, Value};

use super::gguf::Meta;
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

/// The MLA shape of a GGUF `deepseek2` file. The converter writes the
/// latent ranks (`attention.q_lora_rank` only with a query compression),
/// the rotated width as `rope.dimension_count`, and the per-head widths as
/// `attention.key_length_mla` / `value_length_mla` (its `key_length` /
/// `value_length` then describe llama.cpp's one shared latent head); older
/// files, without the `_mla` keys, give the per-head widths in
/// `key_length` / `value_length`. llama.cpp rotates interleaved pairs
/// (its NORM RoPE) for this architecture: `rope_interleave` is true.
pub(super) fn from_gguf(m: &Meta) -> Result<MlaConfig> {
    let positive = |key: &str| -> Result<usize> {
        match m.usize_req(key)? {
            0 => Err(m.fail(format!("metadata '{}' must be positive", m.key(key)))),
            v => Ok(v),
        }
    };
    let kv_lora_rank = positive("attention.kv_lora_rank")?;
    let q_lora_rank = m.usize_opt("attention.q_lora_rank")?.filter(|&r| r > 0);
    let rope = positive("rope.dimension_count")?;
    let (qk, v) = match m.usize_opt("attention.key_length_mla")? {
        Some(k) => (k, positive("attention.value_length_mla")?),
        None => (
            positive("attention.key_length")?,
            positive("attention.value_length")?,
        ),
    };
    if qk <= rope || !rope.is_multiple_of(2) {
        return Err(m.fail(format!(
            "a query/key head of {qk} values cannot hold the {rope} rotated ones ('{}'): \
             it needs more, and an even number to rotate",
            m.key("rope.dimension_count")
        )));
    }
    Ok(MlaConfig {
        q_lora_rank,
        kv_lora_rank,
        qk_nope_head_dim: qk - rope,
        qk_rope_head_dim: rope,
        v_head_dim: v,
        rope_interleave: true,
    })
}

/// YaRN from a GGUF `deepseek2` file, as llama.cpp applies it
/// (`llama-context.cpp`, `src/models/deepseek2.cpp`): `rope.scaling.factor`,
/// `original_context_length`, `yarn_beta_fast`/`yarn_beta_slow` (default 32
/// and 1), and `yarn_log_multiplier` = 0.1 · `mscale_all_dim`. llama.cpp
/// takes `mscale` equal to `mscale_all_dim` (true of the released
/// DeepSeek-V2/V3 configs), so cos and sin are not scaled and the softmax
/// scale gains `mscale(factor, mscale_all_dim)²`; without the multiplier
/// both take `mscale(factor, 1)`, which is transformers' reading of
/// `mscale_all_dim` = 1 with no `mscale`. Extra attention or extrapolation
/// factors are refused.
pub(super) fn yarn_from_gguf(m: &Meta) -> Result<RopeScaling> {
    let factor = m
        .f32_opt("rope.scaling.factor")?
        .ok_or_else(|| m.missing("rope.scaling.factor"))?;
    let original = m.usize_req("rope.scaling.original_context_length")?;
    if factor.is_nan() || factor <= 0.0 || original == 0 {
        return Err(m.fail(format!(
            "invalid YaRN scaling: factor {factor}, original_context_length {original}"
        )));
    }
    for k in [
        "rope.scaling.yarn_ext_factor",
        "rope.scaling.yarn_attn_factor",
        "rope.scaling.attn_factor",
    ] {
        if let Some(v) = m.f32_opt(k)?.filter(|v| *v != 1.0) {
            return Err(m.fail(format!(
                "metadata '{}' = {v} is not supported (only 1)",
                m.key(k)
            )));
        }
    }
    let (mscale, mscale_all_dim) = match m.f32_opt("rope.scaling.yarn_log_multiplier")? {
        Some(l) => {
            let a = (l as f64 / 0.1) as f32;
            (Some(a), Some(a))
        }
        None => (None, Some(1.0)),
    };
    Ok(RopeScaling::Yarn {
        factor,
        original_max_position_embeddings: original,
        beta_fast: m.f32_opt("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0),
        beta_slow: m.f32_opt("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
        mscale,
        mscale_all_dim,
        attention_factor: None,
        truncate: true,
    })
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
