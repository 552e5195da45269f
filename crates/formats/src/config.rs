//! The architecture description every model file is reduced to.

use mm_core::{Error, Result};
use serde_json::{json, Map, Value};

mod gguf;
mod mla;
pub use mla::{is_mla, yarn_get_mscale, MlaConfig};
mod moe;
pub use moe::{GroupScore, MoeConfig, MoeScoring};

/// Architectures metal-marlin implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3/3.x, SmolLM/SmolLM2 (HF `LlamaForCausalLM`, GGUF `llama`).
    Llama,
    /// Mistral (HF `MistralForCausalLM`).
    Mistral,
    /// Qwen2/2.5: q/k/v biases.
    Qwen2,
    /// Qwen3: per-head q/k RMSNorm, explicit head_dim.
    Qwen3,
    /// DeepSeek-V2: multi-head latent attention ([`MlaConfig`]).
    DeepseekV2,
    /// DeepSeek-V3: multi-head latent attention.
    DeepseekV3,
    /// GLM-4.7-Flash: multi-head latent attention (DeepSeek-V3's).
    Glm4MoeLite,
    /// Qwen3-MoE: Qwen3 attention, softmax-routed experts.
    Qwen3Moe,
    /// Mixtral: Mistral attention, softmax top-2 experts.
    Mixtral,
    /// GLM-4.5/4.6/4.7: GQA with partial rotary, sigmoid-routed experts
    /// with correction bias, groups and a shared expert.
    Glm4Moe,
}

/// RoPE frequency scaling.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear { factor: f32 },
    /// Llama 3.1 piecewise frequency scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
    /// Per-frequency divisors read from a GGUF `rope_freqs.weight` tensor.
    FreqFactors(Vec<f32>),
    /// YaRN (`rope_type: "yarn"`, DeepSeek's long-context scaling); the
    /// optional fields as the config gives them.
    Yarn {
        factor: f32,
        original_max_position_embeddings: usize,
        beta_fast: f32,
        beta_slow: f32,
        mscale: Option<f32>,
        mscale_all_dim: Option<f32>,
        attention_factor: Option<f32>,
        truncate: bool,
    },
}

/// Hyper-parameters of a decoder-only transformer.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2).
    pub attention_bias: bool,
    /// Per-head RMSNorm of q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// Sliding-window attention span (Mistral v0.1); None = full attention.
    pub sliding_window: Option<usize>,
    /// Multi-head latent attention (DeepSeek-V2/V3, GLM-4.7-Flash); its
    /// `head_dim` is `qk_rope_head_dim`, the width RoPE rotates.
    pub mla: Option<MlaConfig>,
    /// Rotary width of each head when only its first dimensions rotate
    /// (`partial_rotary_factor`, GLM); None: the whole head.
    pub rotary_dim: Option<usize>,
    /// Routed experts (MoE architectures).
    pub moe: Option<MoeConfig>,
}

/// HF class name, HF `model_type`, architecture.
const HF_ARCHS: &[(&str, &str, Arch)] = &[
    ("LlamaForCausalLM", "llama", Arch::Llama),
    ("MistralForCausalLM", "mistral", Arch::Mistral),
    ("Qwen2ForCausalLM", "qwen2", Arch::Qwen2),
    ("Qwen3ForCausalLM", "qwen3", Arch::Qwen3),
    ("DeepseekV2ForCausalLM", "deepseek_v2", Arch::DeepseekV2),
    ("DeepseekV3ForCausalLM", "deepseek_v3", Arch::DeepseekV3),
    ("Glm4MoeLiteForCausalLM", "glm4_moe_lite", Arch::Glm4MoeLite),
    ("Qwen3MoeForCausalLM", "qwen3_moe", Arch::Qwen3Moe),
    ("MixtralForCausalLM", "mixtral", Arch::Mixtral),
    ("Glm4MoeForCausalLM", "glm4_moe", Arch::Glm4Moe),
];

/// `rope_type` of the metal-marlin extension that writes GGUF per-frequency
/// RoPE divisors (`rope_freqs.weight`) into a `config.json`:
/// `{"rope_type": "freq_factors", "factors": [..head_dim/2 numbers..]}`
/// (docs/FORMAT.md §1). transformers has no equivalent.
pub const FREQ_FACTORS_ROPE_TYPE: &str = "freq_factors";

const DEFAULT_ROPE_THETA: f32 = 10000.0;
/// transformers' default `rms_norm_eps` for every architecture above.
const DEFAULT_RMS_NORM_EPS: f32 = 1e-6;

/// An f32 as the shortest decimal that reads back to the same f32
/// (`1e-5`, not `9.999999747378752e-6`).
fn f32_json(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

fn cfg_err(msg: impl Into<String>) -> Error {
    Error::Config(msg.into())
}

/// Typed access to a JSON object with messages naming the field.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    /// Prefix for field names in messages ("" or "rope_scaling.").
    ctx: &'a str,
}

impl<'a> Obj<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn missing(&self, key: &str) -> Error {
        cfg_err(format!("missing field '{}{key}'", self.ctx))
    }

    fn bad(&self, key: &str, want: &str, v: &Value) -> Error {
        cfg_err(format!(
            "field '{}{key}' must be {want}, found {v}",
            self.ctx
        ))
    }

    fn u64_opt(&self, key: &str) -> Result<Option<u64>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        if let Some(u) = v.as_u64() {
            return Ok(Some(u));
        }
        // Some exporters write integral values as floats (e.g. 4096.0).
        match v.as_f64() {
            Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64 => Ok(Some(f as u64)),
            _ => Err(self.bad(key, "a non-negative integer", v)),
        }
    }

    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.u64_opt(key)? {
            None => Ok(None),
            Some(u) => usize::try_from(u)
                .map(Some)
                .map_err(|_| self.bad(key, "a smaller integer", &Value::from(u))),
        }
    }

    fn usize_req(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?.ok_or_else(|| self.missing(key))
    }

    fn u32_opt(&self, key: &str) -> Result<Option<u32>> {
        match self.u64_opt(key)? {
            None => Ok(None),
            Some(u) => u32::try_from(u)
                .map(Some)
                .map_err(|_| self.bad(key, "a 32-bit token id", &Value::from(u))),
        }
    }

    fn f32_opt(&self, key: &str) -> Result<Option<f32>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v.as_f64() {
            Some(f) if f.is_finite() => Ok(Some(f as f32)),
            _ => Err(self.bad(key, "a finite number", v)),
        }
    }

    fn f32_req(&self, key: &str) -> Result<f32> {
        self.f32_opt(key)?.ok_or_else(|| self.missing(key))
    }

    fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_bool()
            .map(Some)
            .ok_or_else(|| self.bad(key, "true or false", v))
    }

    fn str_opt(&self, key: &str) -> Result<Option<&'a str>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_str()
            .map(Some)
            .ok_or_else(|| self.bad(key, "a string", v))
    }
}

/// A HF rope scaling object (`rope_scaling` or `rope_parameters`) to our
/// enum; `None` for the default (unscaled) RoPE.
fn hf_rope_scaling(o: &Obj, arch: Arch) -> Result<Option<RopeScaling>> {
    let ty = match o.str_opt("rope_type")? {
        Some(t) => Some(t),
        None => o.str_opt("type")?,
    };
    match ty.unwrap_or("default") {
        "default" => Ok(None),
        FREQ_FACTORS_ROPE_TYPE => {
            let v = o.get("factors").ok_or_else(|| o.missing("factors"))?;
            let factors = v
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|x| x.as_f64().filter(|f| f.is_finite()).map(|f| f as f32))
                        .collect::<Option<Vec<f32>>>()
                })
                .ok_or_else(|| o.bad("factors", "a list of finite numbers", v))?;
            Ok(Some(RopeScaling::FreqFactors(factors)))
        }
        "linear" => {
            let factor = o.f32_req("factor")?;
            if factor <= 0.0 {
                return Err(cfg_err(format!(
                    "field '{}factor' must be positive, found {factor}",
                    o.ctx
                )));
            }
            Ok(Some(RopeScaling::Linear { factor }))
        }
        "llama3" => {
            let s = RopeScaling::Llama3 {
                factor: o.f32_req("factor")?,
                low_freq_factor: o.f32_req("low_freq_factor")?,
                high_freq_factor: o.f32_req("high_freq_factor")?,
                original_max_position_embeddings: o
                    .usize_req("original_max_position_embeddings")?,
            };
            if let RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } = s
            {
                if factor <= 0.0
                    || low_freq_factor <= 0.0
                    || high_freq_factor <= low_freq_factor
                    || original_max_position_embeddings == 0
                {
                    return Err(cfg_err(format!(
                        "invalid llama3 RoPE scaling in '{}': factor {factor}, low_freq_factor {low_freq_factor}, high_freq_factor {high_freq_factor}, original_max_position_embeddings {original_max_position_embeddings}",
                        o.ctx.trim_end_matches('.')
                    )));
                }
            }
            Ok(Some(s))
        }
        // Read (and tested) for the MLA models only so far.
        "yarn" if mla::is_mla(arch) => mla::parse_yarn(o).map(Some),
        other => Err(cfg_err(format!(
            "unsupported RoPE scaling type '{other}' in '{}' (supported: default, linear, llama3, yarn, {FREQ_FACTORS_ROPE_TYPE})",
            o.ctx.trim_end_matches('.')
        ))),
    }
}

impl ModelConfig {
    /// Parses an HF `config.json` (older `rope_theta`/`rope_scaling` keys and
    /// newer `rope_parameters`).
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| cfg_err(format!("config.json is not valid JSON: {e}")))?;
        let map = v
            .as_object()
            .ok_or_else(|| cfg_err("config.json must be a JSON object"))?;
        let o = Obj { map, ctx: "" };

        let supported = || HF_ARCHS.iter().map(|a| a.0).collect::<Vec<_>>().join(", ");
        let arch = match o.get("architectures") {
            Some(Value::Array(a)) if !a.is_empty() => {
                let name = a[0].as_str().ok_or_else(|| {
                    o.bad(
                        "architectures",
                        "a list of class names",
                        &v["architectures"],
                    )
                })?;
                HF_ARCHS
                    .iter()
                    .find(|(class, _, _)| *class == name)
                    .map(|a| a.2)
                    .ok_or_else(|| Error::UnsupportedArch(name.to_string(), supported()))?
            }
            Some(Value::Array(_)) | None => {
                let mt = o.str_opt("model_type")?.ok_or_else(|| {
                    cfg_err("missing field 'architectures' (and no 'model_type')")
                })?;
                HF_ARCHS
                    .iter()
                    .find(|(_, t, _)| *t == mt)
                    .map(|a| a.2)
                    .ok_or_else(|| Error::UnsupportedArch(mt.to_string(), supported()))?
            }
            Some(other) => return Err(o.bad("architectures", "a list of class names", other)),
        };

        if let Some(act) = o.str_opt("hidden_act")? {
            if act != "silu" && act != "swish" {
                return Err(cfg_err(format!(
                    "unsupported hidden_act '{act}' (only silu)"
                )));
            }
        }
        if o.bool_opt("mlp_bias")? == Some(true) {
            return Err(cfg_err("mlp_bias = true is not supported"));
        }

        let hidden_size = o.usize_req("hidden_size")?;
        let num_heads = o.usize_req("num_attention_heads")?;
        if num_heads == 0 {
            return Err(cfg_err("field 'num_attention_heads' must be positive"));
        }
        let num_kv_heads = o.usize_opt("num_key_value_heads")?.unwrap_or(num_heads);
        let mla = mla::parse(&o, arch)?;
        let head_dim = match (mla, o.usize_opt("head_dim")?) {
            // MLA rotates qk_rope_head_dim values per head (transformers
            // sets head_dim to it).
            (Some(m), _) => m.qk_rope_head_dim,
            (None, Some(d)) => d,
            (None, None) => {
                if hidden_size % num_heads != 0 {
                    return Err(cfg_err(format!(
                        "hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads} (and no head_dim is given)"
                    )));
                }
                hidden_size / num_heads
            }
        };

        let (rope_theta, rope_scaling) = match o.get("rope_parameters") {
            Some(Value::Object(p)) => {
                let p = Obj {
                    map: p,
                    ctx: "rope_parameters.",
                };
                let theta = match p.f32_opt("rope_theta")? {
                    Some(t) => t,
                    None => o.f32_opt("rope_theta")?.unwrap_or(DEFAULT_ROPE_THETA),
                };
                (theta, hf_rope_scaling(&p, arch)?)
            }
            Some(other) => return Err(o.bad("rope_parameters", "an object", other)),
            None => {
                let theta = o.f32_opt("rope_theta")?.unwrap_or(DEFAULT_ROPE_THETA);
                let scaling = match o.get("rope_scaling") {
                    None => None,
                    Some(Value::Object(s)) => hf_rope_scaling(
                        &Obj {
                            map: s,
                            ctx: "rope_scaling.",
                        },
                        arch,
                    )?,
                    Some(other) => return Err(o.bad("rope_scaling", "an object or null", other)),
                };
                (theta, scaling)
            }
        };

        let eos_token_ids = match o.get("eos_token_id") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_u64()
                        .and_then(|u| u32::try_from(u).ok())
                        .ok_or_else(|| {
                            o.bad(
                                "eos_token_id",
                                "a token id or a list of token ids",
                                &v["eos_token_id"],
                            )
                        })
                })
                .collect::<Result<Vec<_>>>()?,
            Some(_) => vec![o.u32_opt("eos_token_id")?.unwrap_or_default()],
        };

        let sliding_window = match arch {
            Arch::Mistral | Arch::Mixtral => o.usize_opt("sliding_window")?,
            _ if o.bool_opt("use_sliding_window")? == Some(true) => {
                return Err(cfg_err(
                    "use_sliding_window = true is not supported for this architecture",
                ));
            }
            _ => None,
        };
        let attention_bias = match arch {
            Arch::Qwen2 => true,
            _ => o.bool_opt("attention_bias")?.unwrap_or(false),
        };

        let num_layers = o.usize_req("num_hidden_layers")?;
        let rotary_dim = moe::hf_rotary_dim(&o, arch, head_dim)?;
        let cfg = ModelConfig {
            arch,
            hidden_size,
            intermediate_size: o.usize_req("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: o.usize_req("vocab_size")?,
            rms_norm_eps: o.f32_opt("rms_norm_eps")?.unwrap_or(DEFAULT_RMS_NORM_EPS),
            rope_theta,
            rope_scaling,
            max_position_embeddings: o.usize_req("max_position_embeddings")?,
            tie_word_embeddings: o.bool_opt("tie_word_embeddings")?.unwrap_or(false),
            attention_bias,
            qk_norm: match arch {
                Arch::Qwen3 | Arch::Qwen3Moe => true,
                Arch::Glm4Moe => o.bool_opt("use_qk_norm")?.unwrap_or(false),
                _ => false,
            },
            bos_token_id: o.u32_opt("bos_token_id")?,
            eos_token_ids,
            sliding_window,
            mla,
            rotary_dim,
            moe: moe::from_hf(&o, arch, num_layers)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The configuration as a Hugging Face `config.json` object that
    /// [`ModelConfig::from_hf_json`] reads back to an equal config: the
    /// architecture's class and `model_type`, every dimension, RoPE (GGUF
    /// per-frequency factors use the `freq_factors` extension, see
    /// [`FREQ_FACTORS_ROPE_TYPE`]), special token ids and the flags the
    /// architecture needs (`attention_bias`, `sliding_window`).
    pub fn to_hf_json(&self) -> Value {
        let (class, model_type, _) = HF_ARCHS
            .iter()
            .find(|a| a.2 == self.arch)
            .copied()
            .unwrap_or(HF_ARCHS[0]);
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        put("architectures", json!([class]));
        put("model_type", json!(model_type));
        put("hidden_act", json!("silu"));
        put("hidden_size", json!(self.hidden_size));
        put("intermediate_size", json!(self.intermediate_size));
        put("num_hidden_layers", json!(self.num_layers));
        put("num_attention_heads", json!(self.num_heads));
        put("num_key_value_heads", json!(self.num_kv_heads));
        put("head_dim", json!(self.head_dim));
        put("vocab_size", json!(self.vocab_size));
        put(
            "max_position_embeddings",
            json!(self.max_position_embeddings),
        );
        put("rms_norm_eps", f32_json(self.rms_norm_eps));
        put("rope_theta", f32_json(self.rope_theta));
        put(
            "rope_scaling",
            match &self.rope_scaling {
                None => Value::Null,
                Some(RopeScaling::Linear { factor }) => {
                    json!({"rope_type": "linear", "factor": f32_json(*factor)})
                }
                Some(RopeScaling::Llama3 {
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_max_position_embeddings,
                }) => json!({
                    "rope_type": "llama3",
                    "factor": f32_json(*factor),
                    "low_freq_factor": f32_json(*low_freq_factor),
                    "high_freq_factor": f32_json(*high_freq_factor),
                    "original_max_position_embeddings": original_max_position_embeddings,
                }),
                Some(RopeScaling::FreqFactors(f)) => {
                    let f: Vec<Value> = f.iter().map(|x| f32_json(*x)).collect();
                    json!({"rope_type": FREQ_FACTORS_ROPE_TYPE, "factors": f})
                }
                Some(y @ RopeScaling::Yarn { .. }) => mla::yarn_json(y).unwrap_or(Value::Null),
            },
        );
        put("tie_word_embeddings", json!(self.tie_word_embeddings));
        match self.arch {
            // Qwen2 always has q/k/v biases and reads no flag for them.
            Arch::Qwen2 => {}
            _ => put("attention_bias", json!(self.attention_bias)),
        }
        if let Some(id) = self.bos_token_id {
            put("bos_token_id", json!(id));
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => put("eos_token_id", json!(one)),
            many => put("eos_token_id", json!(many)),
        }
        if matches!(self.arch, Arch::Mistral | Arch::Mixtral) {
            put("sliding_window", json!(self.sliding_window));
        }
        if let Some(c) = &self.mla {
            mla::put_json(&mut put, self.arch, c);
        }
        put("torch_dtype", json!("float16"));
        moe::to_hf(self, &mut m);
        Value::Object(m)
    }

    /// Checks the values are usable together.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(cfg_err(format!("{name} must be positive")));
            }
        }
        if self.num_heads % self.num_kv_heads != 0 {
            return Err(cfg_err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_heads, self.num_kv_heads
            )));
        }
        if self.head_dim % 2 != 0 {
            return Err(cfg_err(format!(
                "head_dim {} must be even for RoPE",
                self.head_dim
            )));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(cfg_err(format!(
                "rms_norm_eps must be positive, found {}",
                self.rms_norm_eps
            )));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(cfg_err(format!(
                "rope_theta must be positive, found {}",
                self.rope_theta
            )));
        }
        if let Some(m) = &self.mla {
            if m.qk_rope_head_dim != self.head_dim {
                return Err(cfg_err(format!(
                    "head_dim {} differs from qk_rope_head_dim {} in an MLA model",
                    self.head_dim, m.qk_rope_head_dim
                )));
            }
        }
        if mla::is_mla(self.arch) != self.mla.is_some() {
            return Err(cfg_err(format!(
                "{:?} {} multi-head latent attention fields",
                self.arch,
                if self.mla.is_some() {
                    "cannot have"
                } else {
                    "needs"
                }
            )));
        }
        moe::validate(self)?;
        if let Some(RopeScaling::FreqFactors(f)) = &self.rope_scaling {
            if f.len() != self.head_dim / 2 {
                return Err(cfg_err(format!(
                    "rope_freqs has {} factors, expected head_dim / 2 = {}",
                    f.len(),
                    self.head_dim / 2
                )));
            }
            if let Some(bad) = f.iter().find(|v| !(**v > 0.0 && v.is_finite())) {
                return Err(cfg_err(format!(
                    "rope_freqs holds the non-positive factor {bad}"
                )));
            }
        }
        Ok(())
    }
}
