//! [`ModelConfig`] from GGUF metadata: the `{arch}.*` keys llama.cpp's
//! converter writes (`convert_hf_to_gguf.py` and its `conversion/*.py`
//! classes) and its loader reads (`src/llama-model.cpp`,
//! `src/models/<arch>.cpp`), with llama.cpp's defaults for optional keys.
//!
//! | `general.architecture` | arch | notes |
//! | --- | --- | --- |
//! | `llama` | Llama, or Mixtral when `expert_count` > 0 | q/k rows permuted (undone by the source) |
//! | `qwen2`, `qwen3` | Qwen2, Qwen3 | |
//! | `qwen3moe` | Qwen3-MoE | experts: [`moe::from_gguf`] |
//! | `glm4moe` | GLM-4.5/4.6/4.7 | `rope.dimension_count` < head width: partial rotary; `nextn_predict_layers` MTP blocks counted in `block_count` are not model layers |
//! | `deepseek2` | DeepSeek-V2 (softmax routing), DeepSeek-V3 (sigmoid; also GLM-4.7-Flash, which llama.cpp converts to this arch) | MLA shape: [`mla::from_gguf`]; YaRN |
//!
//! Which layers are mixtures of experts is read from the tensors (a layer
//! is one when it has a router `blk.N.ffn_gate_inp.weight`), checked
//! against `leading_dense_block_count` when the file has it. A missing
//! required key is an error naming it.

use mm_core::{Error, Result};

use super::{mla, moe, Arch, ModelConfig, MoeScoring, RopeScaling, DEFAULT_ROPE_THETA};
use crate::{GgufFile, GgufValue};

/// GGUF `general.architecture` values we load (`llama` with experts is
/// Mixtral; `deepseek2` is DeepSeek-V3 when its experts are sigmoid-routed).
const GGUF_ARCHS: &[(&str, Arch)] = &[
    ("llama", Arch::Llama),
    ("qwen2", Arch::Qwen2),
    ("qwen3", Arch::Qwen3),
    ("qwen3moe", Arch::Qwen3Moe),
    ("glm4moe", Arch::Glm4Moe),
    ("deepseek2", Arch::DeepseekV2),
];

/// The metadata of one GGUF architecture, read with errors that name the
/// file and the key.
pub(super) struct Meta<'a> {
    pub file: &'a GgufFile,
    /// `general.architecture`: the prefix of the model's keys.
    pub arch: &'a str,
}

impl Meta<'_> {
    /// The full name of the model key `s` (`deepseek2.expert_count`).
    pub fn key(&self, s: &str) -> String {
        format!("{}.{s}", self.arch)
    }

    pub fn fail(&self, reason: impl Into<String>) -> Error {
        Error::format(&self.file.path, "GGUF", reason)
    }

    /// The error for a missing required key `s`.
    pub fn missing(&self, s: &str) -> Error {
        self.fail(format!(
            "metadata '{}' is missing (needed for the model config)",
            self.key(s)
        ))
    }

    /// An integer key that may also be written per layer (an array), in
    /// which case every layer must agree.
    pub fn usize_opt(&self, s: &str) -> Result<Option<usize>> {
        let k = self.key(s);
        match self.file.get(&k) {
            None => Ok(None),
            Some(GgufValue::Array(_)) => {
                let v = self.file.get_u32_array(&k)?.unwrap_or_default();
                match v.first() {
                    Some(&first) if v.iter().all(|&x| x == first) => Ok(Some(first as usize)),
                    _ => Err(self.fail(format!(
                        "metadata '{k}' varies per layer ({v:?}), which is not supported"
                    ))),
                }
            }
            Some(_) => Ok(self.file.get_u32(&k)?.map(|v| v as usize)),
        }
    }

    pub fn usize_req(&self, s: &str) -> Result<usize> {
        self.usize_opt(s)?.ok_or_else(|| self.missing(s))
    }

    pub fn f32_opt(&self, s: &str) -> Result<Option<f32>> {
        self.file.get_f32(&self.key(s))
    }

    pub fn bool_opt(&self, s: &str) -> Result<Option<bool>> {
        self.file.get_bool(&self.key(s))
    }

    /// Whether the file holds tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.file.contains(name)
    }
}

impl ModelConfig {
    /// Reads the hyper-parameters from GGUF metadata (see the module docs
    /// for the architectures and keys).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let arch_name = file.architecture()?;
        let mut arch = GGUF_ARCHS
            .iter()
            .find(|(n, _)| *n == arch_name)
            .map(|a| a.1)
            .ok_or_else(|| {
                Error::UnsupportedArch(
                    arch_name.to_string(),
                    GGUF_ARCHS
                        .iter()
                        .map(|a| a.0)
                        .collect::<Vec<_>>()
                        .join(", "),
                )
            })?;
        let m = Meta {
            file,
            arch: arch_name,
        };
        if arch == Arch::Llama && m.usize_opt("expert_count")?.unwrap_or(0) > 0 {
            arch = Arch::Mixtral;
        }

        let hidden_size = m.usize_req("embedding_length")?;
        let num_heads = m.usize_req("attention.head_count")?;
        if num_heads == 0 {
            return Err(m.fail(format!("metadata '{}' is 0", m.key("attention.head_count"))));
        }
        let blocks = m.usize_req("block_count")?;
        // glm4moe counts its multi-token-prediction blocks in block_count.
        let nextn = m.usize_opt("nextn_predict_layers")?.unwrap_or(0);
        if nextn >= blocks {
            return Err(m.fail(format!(
                "metadata '{}' = {nextn} leaves no model layer of the {blocks} blocks",
                m.key("nextn_predict_layers")
            )));
        }
        let num_layers = blocks - nextn;

        let mla = if mla::is_mla(arch) {
            Some(mla::from_gguf(&m)?)
        } else {
            None
        };
        let (num_kv_heads, head_dim, rotary_dim) = match &mla {
            // llama.cpp stores MLA as one shared KV head of the latent
            // width (head_count_kv 1, key_length kv_lora + rope): every
            // head reads the latent, as num_key_value_heads = heads says.
            Some(c) => (num_heads, c.qk_rope_head_dim, None),
            None => {
                let (kv, d) = gqa_shape(&m, hidden_size, num_heads)?;
                (kv, d, rotary_dim(&m, arch, d)?)
            }
        };

        let vocab_size = match m.usize_opt("vocab_size")? {
            Some(v) => v,
            None => match file.get("tokenizer.ggml.tokens") {
                Some(GgufValue::Array(a)) => a.len(),
                _ => match file.tensor_info("token_embd.weight") {
                    Some(t) if t.shape.len() == 2 => t.shape[0],
                    _ => return Err(m.missing("vocab_size")),
                },
            },
        };

        let eps_key = "attention.layer_norm_rms_epsilon";
        let rms_norm_eps = m.f32_opt(eps_key)?.ok_or_else(|| m.missing(eps_key))?;
        let rope_theta = m.f32_opt("rope.freq_base")?.unwrap_or(DEFAULT_ROPE_THETA);
        let rope_scaling = rope_scaling(&m, arch)?;
        let max_position_embeddings = m.usize_req("context_length")?;

        let bos_token_id = file.get_u32("tokenizer.ggml.bos_token_id")?;
        let mut eos_token_ids = Vec::new();
        for k in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            if let Some(id) = file.get_u32(k)? {
                if !eos_token_ids.contains(&id) {
                    eos_token_ids.push(id);
                }
            }
        }

        let intermediate_size = m.usize_req("feed_forward_length")?;
        let moe = moe::from_gguf(&m, arch, num_layers, intermediate_size)?;
        if arch == Arch::DeepseekV2
            && moe
                .as_ref()
                .is_some_and(|c| c.scoring == MoeScoring::Sigmoid)
        {
            arch = Arch::DeepseekV3;
        }
        let attention_bias = match arch {
            Arch::Qwen2 => true,
            _ if mla.is_some() => file.contains("blk.0.attn_kv_a_mqa.bias"),
            _ => file.contains("blk.0.attn_q.bias"),
        };
        let cfg = ModelConfig {
            arch,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: !file.contains("output.weight"),
            attention_bias,
            qk_norm: match arch {
                Arch::Qwen3 | Arch::Qwen3Moe => true,
                Arch::Glm4Moe => file.contains("blk.0.attn_q_norm.weight"),
                _ => false,
            },
            bos_token_id,
            eos_token_ids,
            sliding_window: None,
            mla,
            rotary_dim,
            moe,
        };
        cfg.validate().map_err(|e| match e {
            Error::Config(msg) => m.fail(format!("model config: {msg}")),
            e => e,
        })?;
        Ok(cfg)
    }
}

/// KV heads and head width of grouped-query attention.
fn gqa_shape(m: &Meta, hidden: usize, heads: usize) -> Result<(usize, usize)> {
    let kv = m.usize_opt("attention.head_count_kv")?.unwrap_or(heads);
    let d = match m.usize_opt("attention.key_length")? {
        Some(d) => d,
        None => {
            if !hidden.is_multiple_of(heads) {
                return Err(m.fail(format!(
                    "embedding_length {hidden} is not divisible by head_count {heads} (and no attention.key_length)"
                )));
            }
            hidden / heads
        }
    };
    if let Some(v) = m.usize_opt("attention.value_length")? {
        if v != d {
            return Err(m.fail(format!(
                "attention.value_length {v} differs from key_length {d}, which is not supported"
            )));
        }
    }
    Ok((kv, d))
}

/// The rotary width when it is less than the head (GLM-4-MoE's
/// `partial_rotary_factor`, written as `rope.dimension_count`).
fn rotary_dim(m: &Meta, arch: Arch, head_dim: usize) -> Result<Option<usize>> {
    match m.usize_opt("rope.dimension_count")? {
        Some(r) if r == head_dim => Ok(None),
        Some(r) if arch == Arch::Glm4Moe && r < head_dim => Ok(Some(r)),
        Some(r) => Err(m.fail(format!(
            "partial rotary embeddings (rope.dimension_count {r} of head_dim {head_dim}) are not supported for {}",
            m.arch
        ))),
        // glm4moe without the key: llama.cpp rotates the whole head.
        None => Ok(None),
    }
}

/// `rope.scaling.*` (linear; YaRN for the MLA architectures), the older
/// `rope.scale_linear`, or per-frequency factors in `rope_freqs.weight`.
fn rope_scaling(m: &Meta, arch: Arch) -> Result<Option<RopeScaling>> {
    let file = m.file;
    let type_key = m.key("rope.scaling.type");
    let mut scaling = match file.get_str(&type_key)? {
        None | Some("none") => None,
        Some("linear") => {
            let fk = m.key("rope.scaling.factor");
            let factor = file
                .get_f32(&fk)?
                .ok_or_else(|| m.missing("rope.scaling.factor"))?;
            if factor.is_nan() || factor <= 0.0 {
                return Err(m.fail(format!("metadata '{fk}' must be positive, found {factor}")));
            }
            Some(RopeScaling::Linear { factor })
        }
        Some("yarn") if mla::is_mla(arch) => Some(mla::yarn_from_gguf(m)?),
        Some(other) => {
            let supported = if mla::is_mla(arch) {
                "none, linear, yarn"
            } else {
                "none, linear"
            };
            return Err(m.fail(format!(
                "unsupported RoPE scaling type '{other}' in '{type_key}' (supported: {supported})"
            )));
        }
    };
    // Older converters wrote only a linear scale.
    if scaling.is_none() {
        if let Some(f) = m.f32_opt("rope.scale_linear")? {
            if f != 1.0 {
                if f.is_nan() || f <= 0.0 {
                    return Err(m.fail(format!(
                        "metadata '{}' must be positive, found {f}",
                        m.key("rope.scale_linear")
                    )));
                }
                scaling = Some(RopeScaling::Linear { factor: f });
            }
        }
    }
    if file.contains("rope_freqs.weight") {
        if scaling.is_some() {
            return Err(m.fail(
                "both rope_freqs.weight and a RoPE scaling type are present, which is not supported",
            ));
        }
        let w = file.tensor("rope_freqs.weight")?;
        let factors = mm_quant::dequantize_ref(&w)
            .map_err(|e| m.fail(format!("tensor 'rope_freqs.weight': {e}")))?;
        scaling = Some(RopeScaling::FreqFactors(factors));
    }
    Ok(scaling)
}
