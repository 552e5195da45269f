//! The architecture description every model file is reduced to.

use mm_core::Result;

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
}

impl ModelConfig {
    /// Parses an HF `config.json` (older `rope_theta`/`rope_scaling` keys and
    /// newer `rope_parameters`).
    pub fn from_hf_json(text: &str) -> Result<Self> {
        todo!("helper")
    }

    /// Reads the hyper-parameters from GGUF metadata.
    pub fn from_gguf(file: &crate::GgufFile) -> Result<Self> {
        todo!("helper")
    }
}
