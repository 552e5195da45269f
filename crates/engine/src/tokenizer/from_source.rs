//! The tokenizer that belongs to a checkpoint: `tokenizer.json` (+ config
//! files) for an HF directory, the embedded vocabulary for a GGUF file.

use std::path::Path;

use mm_core::Result;
use mm_formats::{GgufFile, WeightSource};

use super::{GgufVocab, Tokenizer};

/// Builds the tokenizer of the model at `path` opened as `src`.
pub fn load_for(path: &Path, src: &dyn WeightSource) -> Result<Tokenizer> {
    match src.gguf() {
        Some(g) => Tokenizer::from_gguf_vocab(gguf_vocab(g)?),
        None => Tokenizer::from_hf_dir(path),
    }
}

/// Reads the `tokenizer.*` metadata of a GGUF file.
pub fn gguf_vocab(g: &GgufFile) -> Result<GgufVocab> {
    let k = |s: &str| format!("tokenizer.ggml.{s}");
    let strings = |key: &str| -> Result<Option<Vec<String>>> {
        Ok(g.get_str_array(key)?
            .map(|v| v.into_iter().map(String::from).collect()))
    };
    let mut extra_eos_ids = Vec::new();
    for key in ["eot_token_id", "eom_token_id"] {
        if let Some(id) = g.get_u32(&k(key))? {
            extra_eos_ids.push(id);
        }
    }
    Ok(GgufVocab {
        model: g.get_str(&k("model"))?.unwrap_or("llama").to_string(),
        pre: g.get_str(&k("pre"))?.map(String::from),
        tokens: strings(&k("tokens"))?.unwrap_or_default(),
        scores: g.get_f32_array(&k("scores"))?,
        token_types: g.get_i32_array(&k("token_type"))?,
        merges: strings(&k("merges"))?,
        bos_id: g.get_u32(&k("bos_token_id"))?,
        eos_id: g.get_u32(&k("eos_token_id"))?,
        unk_id: g.get_u32(&k("unknown_token_id"))?,
        pad_id: g.get_u32(&k("padding_token_id"))?,
        add_bos: g.get_bool(&k("add_bos_token"))?,
        add_eos: g.get_bool(&k("add_eos_token"))?,
        add_space_prefix: g.get_bool(&k("add_space_prefix"))?,
        chat_template: g.get_str("tokenizer.chat_template")?.map(String::from),
        extra_eos_ids,
    })
}
