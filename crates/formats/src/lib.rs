//! Model file formats: GGUF v2/v3, (sharded) safetensors, HF `config.json`,
//! and the mapping of both checkpoint kinds onto one set of tensor names
//! (the HF names, e.g. `model.layers.0.self_attn.q_proj.weight`).

pub mod config;
pub mod gguf;
pub mod safetensors;
pub mod source;
pub mod writer;

pub use config::{
    is_mla, yarn_get_mscale, Arch, GroupScore, MlaConfig, ModelConfig, MoeConfig, MoeScoring,
    RopeScaling, FREQ_FACTORS_ROPE_TYPE,
};
pub use gguf::{GgufFile, GgufTensorInfo, GgufValue};
pub use safetensors::SafetensorsSet;
pub use source::{
    gguf_to_hf_name, hf_to_gguf_name, mm_format_label, open_source, unpermute_rows, GgufSource,
    HfSource, WeightSource,
};
pub use writer::{SafetensorsPlan, SafetensorsWriter, ShardPlan, TensorSpec};
