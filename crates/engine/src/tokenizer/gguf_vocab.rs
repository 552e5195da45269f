//! Tokenizers from GGUF metadata (`tokenizer.ggml.*`).
//!
//! * `gpt2`: byte-level BPE. The text is split by the regexes of the
//!   vocabulary's `tokenizer.ggml.pre` (see `pre_split`), mapped to the
//!   GPT-2 byte alphabet, and merged by the listed merges.
//! * `llama`: sentencepiece-style BPE. Spaces become `▁` (and a `▁` is
//!   prepended when `add_space_prefix`), pieces merge by the listed merges or
//!   by merges derived from the token scores, and characters no token covers
//!   fall back to `<0xNN>` byte tokens (else the unknown token).
//!
//! Control tokens (type 3) become special added tokens and user-defined
//! tokens (type 4) plain added tokens, so both are matched whole in text;
//! BOS/EOS/UNK/PAD are special too.

use std::collections::HashMap;

use mm_core::{Error, Result};
use serde::{Deserialize, Serialize};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab as BpeVocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    SplitDelimiterBehavior,
};

use super::{merges, pre_split, Parts};

/// The values of `tokenizer.ggml.token_type`.
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// The tokenizer metadata of a GGUF file, as plain data.
///
/// Field ← GGUF key: `model` ← `tokenizer.ggml.model`, `pre` ←
/// `tokenizer.ggml.pre`, `tokens` ← `tokenizer.ggml.tokens`, `scores` ←
/// `tokenizer.ggml.scores`, `token_types` ← `tokenizer.ggml.token_type`,
/// `merges` ← `tokenizer.ggml.merges`, `bos_id`/`eos_id`/`unk_id`/`pad_id`
/// ← `tokenizer.ggml.{bos,eos,unknown,padding}_token_id`, `add_bos`/`add_eos`
/// ← `tokenizer.ggml.add_{bos,eos}_token`, `add_space_prefix` ←
/// `tokenizer.ggml.add_space_prefix`, `chat_template` ←
/// `tokenizer.chat_template`, `extra_eos_ids` ← `tokenizer.ggml.eot_token_id`
/// and `tokenizer.ggml.eom_token_id` (ids that also end generation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GgufVocab {
    /// "gpt2" (byte-level BPE) or "llama" (sentencepiece-style).
    pub model: String,
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub scores: Option<Vec<f32>>,
    pub token_types: Option<Vec<i32>>,
    /// "left right" pairs in rank order.
    pub merges: Option<Vec<String>>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    /// Default: true for "llama" (and llama.cpp's llama3/tekken pre-tokenizers), else false.
    pub add_bos: Option<bool>,
    /// Default: false.
    pub add_eos: Option<bool>,
    /// Default: true for "llama"; unused for "gpt2".
    pub add_space_prefix: Option<bool>,
    pub chat_template: Option<String>,
    /// EOT, EOM and other ids that end generation besides `eos_id`.
    pub extra_eos_ids: Vec<u32>,
}

fn err(msg: impl Into<String>) -> Error {
    Error::Tokenizer(format!("GGUF vocabulary: {}", msg.into()))
}

fn tok_err(what: &str) -> impl Fn(tokenizers::Error) -> Error + '_ {
    move |e| err(format!("{what}: {e}"))
}

pub(crate) fn build(v: GgufVocab) -> Result<Parts> {
    let n = v.tokens.len();
    if n == 0 {
        return Err(err("tokenizer.ggml.tokens is empty"));
    }
    if u32::try_from(n).is_err() {
        return Err(err(format!("{n} tokens is more than token ids can number")));
    }
    if let Some(t) = &v.token_types {
        if t.len() < n {
            return Err(err(format!("{} token types for {n} tokens", t.len())));
        }
    }
    if let Some(s) = &v.scores {
        if s.len() < n {
            return Err(err(format!("{} scores for {n} tokens", s.len())));
        }
    }

    // Empty entries get a placeholder name, as llama.cpp does.
    let tokens: Vec<String> = v
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if t.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                t.clone()
            }
        })
        .collect();
    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(n);
    for (i, t) in tokens.iter().enumerate() {
        if let Some(prev) = vocab.insert(t.clone(), i as u32) {
            return Err(err(format!("duplicate token {t:?} at ids {prev} and {i}")));
        }
    }
    let type_of = |id: usize| v.token_types.as_ref().map_or(token_type::NORMAL, |t| t[id]);
    let in_range = |id: Option<u32>, what: &str| -> Option<u32> {
        match id {
            Some(i) if (i as usize) < n => Some(i),
            Some(i) => {
                tracing::warn!("{what} id {i} is outside the vocabulary ({n} tokens); ignoring it");
                None
            }
            None => None,
        }
    };
    let mut bos_id = in_range(v.bos_id, "BOS");
    let mut eos_id = in_range(v.eos_id, "EOS");
    let mut unk_id = in_range(v.unk_id, "UNK");
    let pad_id = in_range(v.pad_id, "PAD");

    let model = v.model.trim();
    let (mut tok, add_bos) = match model {
        "gpt2" => {
            let split = pre_split::resolve(v.pre.as_deref());
            let merges = match &v.merges {
                Some(m) => merges::parse(m, &vocab),
                None => {
                    return Err(err(
                        "a gpt2 (byte-level BPE) vocabulary needs tokenizer.ggml.merges",
                    ))
                }
            };
            let bpe = BPE::builder()
                .vocab_and_merges(vocab.into_iter().collect::<BpeVocab>(), merges)
                .ignore_merges(split.ignore_merges)
                .build()
                .map_err(tok_err("cannot build the BPE model"))?;
            let mut tok = tokenizers::Tokenizer::new(bpe);
            let mut pre: Vec<PreTokenizerWrapper> = Vec::with_capacity(split.regexes.len() + 1);
            for re in split.regexes {
                let s = Split::new(
                    SplitPattern::Regex(re.to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| {
                    err(format!(
                        "pre-tokenizer '{}': regex {re:?} does not compile: {e}",
                        split.name
                    ))
                })?;
                pre.push(s.into());
            }
            pre.push(ByteLevel::new(false, false, false).into());
            tok.with_pre_tokenizer(Some(PreSequence::new(pre)));
            tok.with_decoder(Some(ByteLevelDecoder::default()));
            (tok, v.add_bos.unwrap_or(split.add_bos))
        }
        "llama" => {
            // Older files name no special ids; sentencepiece's are conventional.
            let by_name = |name: &str| vocab.get(name).copied();
            bos_id = bos_id.or_else(|| by_name("<s>"));
            eos_id = eos_id.or_else(|| by_name("</s>"));
            unk_id = unk_id.or_else(|| by_name("<unk>"));
            let merges = match (&v.merges, &v.scores) {
                (Some(m), _) => merges::parse(m, &vocab),
                (None, Some(scores)) => merges::from_scores(&tokens, &scores[..n], &vocab),
                (None, None) => {
                    tracing::warn!(
                        "sentencepiece vocabulary without scores; ranking merges by token order"
                    );
                    let by_order: Vec<f32> = (0..n).map(|i| -(i as f32)).collect();
                    merges::from_scores(&tokens, &by_order, &vocab)
                }
            };
            let mut builder = BPE::builder()
                .vocab_and_merges(vocab.into_iter().collect::<BpeVocab>(), merges)
                .fuse_unk(true)
                .byte_fallback(true);
            if let Some(u) = unk_id {
                builder = builder.unk_token(tokens[u as usize].clone());
            }
            let bpe = builder
                .build()
                .map_err(tok_err("cannot build the BPE model"))?;
            let mut tok = tokenizers::Tokenizer::new(bpe);

            let space_prefix = v.add_space_prefix.unwrap_or(true);
            let mut norm: Vec<NormalizerWrapper> = Vec::with_capacity(2);
            if space_prefix {
                norm.push(Prepend::new("▁".into()).into());
            }
            norm.push(
                Replace::new(" ", "▁")
                    .map_err(tok_err("normalizer"))?
                    .into(),
            );
            tok.with_normalizer(Some(NormalizerSequence::new(norm)));

            let mut dec: Vec<DecoderWrapper> = vec![
                Replace::new("▁", " ").map_err(tok_err("decoder"))?.into(),
                ByteFallback::new().into(),
                Fuse::new().into(),
            ];
            if space_prefix {
                dec.push(Strip::new(' ', 1, 0).into());
            }
            tok.with_decoder(Some(DecoderSequence::new(dec)));
            (tok, v.add_bos.unwrap_or(true))
        }
        other => {
            return Err(err(format!(
                "unsupported tokenizer.ggml.model '{other}' (supported: gpt2, llama)"
            )));
        }
    };
    let add_eos = v.add_eos.unwrap_or(false);

    // Added tokens: control and the named specials are special; user-defined are not.
    let named: Vec<u32> = [bos_id, eos_id, unk_id, pad_id]
        .into_iter()
        .flatten()
        .collect();
    let mut specials = Vec::new();
    let mut user = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        match type_of(i) {
            token_type::CONTROL => {
                specials.push(AddedToken::from(t.clone(), true).normalized(false))
            }
            token_type::USER_DEFINED => {
                user.push(AddedToken::from(t.clone(), false).normalized(false))
            }
            _ if named.contains(&(i as u32)) => {
                specials.push(AddedToken::from(t.clone(), true).normalized(false))
            }
            _ => {}
        }
    }
    tok.add_special_tokens(&specials);
    tok.add_tokens(&user);

    let text = |id: Option<u32>| id.map(|i| tokens[i as usize].clone());
    if add_bos && bos_id.is_none() {
        return Err(err(
            "tokenizer.ggml.add_bos_token is set but the vocabulary has no BOS token",
        ));
    }
    if add_eos && eos_id.is_none() {
        return Err(err(
            "tokenizer.ggml.add_eos_token is set but the vocabulary has no EOS token",
        ));
    }
    let bos = if add_bos {
        text(bos_id).zip(bos_id)
    } else {
        None
    };
    let eos = if add_eos {
        text(eos_id).zip(eos_id)
    } else {
        None
    };
    if let Some(pp) = template_processing(bos, eos)? {
        tok.with_post_processor(Some(pp));
    }

    Ok(Parts {
        tok,
        bos_token: text(bos_id),
        eos_token: text(eos_id),
        unk_token: text(unk_id),
        pad_token: text(pad_id),
        extra_eos_ids: v.extra_eos_ids.clone(),
        chat_template: v.chat_template.clone().filter(|t| !t.trim().is_empty()),
    })
}

/// A post-processor putting `bos` before and `eos` after the sequence (as
/// `transformers`' `update_post_processor` builds it); `None` when neither.
fn template_processing(
    bos: Option<(String, u32)>,
    eos: Option<(String, u32)>,
) -> Result<Option<PostProcessorWrapper>> {
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    use serde_json::{json, Map, Value};
    let special = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut tokens = Map::new();
    if let Some((t, id)) = &bos {
        single.push(special(t, 0));
        tokens.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    single.push(seq("A", 0));
    if let Some((t, id)) = &eos {
        single.push(special(t, 0));
        tokens.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    pair.extend(single.iter().cloned());
    if let Some((t, _)) = &bos {
        pair.push(special(t, 1));
    }
    pair.push(seq("B", 1));
    if let Some((t, _)) = &eos {
        pair.push(special(t, 1));
    }
    let spec = json!({
        "type": "TemplateProcessing",
        "single": Value::Array(single),
        "pair": Value::Array(pair),
        "special_tokens": Value::Object(tokens),
    });
    serde_json::from_value(spec)
        .map(Some)
        .map_err(|e| err(format!("cannot build the BOS/EOS post-processor: {e}")))
}
