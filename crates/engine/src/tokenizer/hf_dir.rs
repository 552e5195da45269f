//! Loading a Hugging Face tokenizer directory.
//!
//! `tokenizer.json` is the tokenizer. Around it:
//! * `tokenizer_config.json`: the named special tokens (`bos_token`, ...; a
//!   string or an AddedToken object), `chat_template` (a string, or a list of
//!   `{name, template}` of which "default" is used).
//! * `chat_template.jinja`: the chat template, taking priority over the config.
//! * `generation_config.json` (or, without it, `config.json`): `eos_token_id`,
//!   an int or a list.
//!
//! As `transformers` 5 does, every named special token that is not yet a
//! special added token becomes one, and BOS/EOS are added as the
//! post-processor of `tokenizer.json` says.

use std::path::Path;

use mm_core::{Error, Result};
use serde_json::Value;
use tokenizers::AddedToken;

use super::Parts;

/// The named special tokens of `tokenizer_config.json`.
const NAMED_SPECIAL: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "sep_token",
    "cls_token",
    "mask_token",
];

pub(crate) fn load(dir: &Path) -> Result<Parts> {
    let tokenizer_path = dir.join("tokenizer.json");
    let bytes = std::fs::read(&tokenizer_path).map_err(|e| Error::io(&tokenizer_path, e))?;
    let mut tok = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
        Error::format(
            &tokenizer_path,
            "tokenizer.json",
            format!("not a tokenizer the tokenizers library can load: {e}"),
        )
    })?;

    let config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
    if !config.is_null() && !config.is_object() {
        return Err(Error::format(
            dir.join("tokenizer_config.json"),
            "tokenizer_config.json",
            "not a JSON object",
        ));
    }

    // Named and extra special tokens become special added tokens.
    let mut specials: Vec<AddedToken> = Vec::new();
    for key in NAMED_SPECIAL {
        if let Some(t) = config.get(key).and_then(added_token) {
            specials.push(t);
        }
    }
    for key in ["additional_special_tokens", "extra_special_tokens"] {
        match config.get(key) {
            Some(Value::Array(items)) => specials.extend(items.iter().filter_map(added_token)),
            Some(Value::Object(map)) => specials.extend(map.values().filter_map(added_token)),
            _ => {}
        }
    }
    let existing = tok.get_added_tokens_decoder();
    let missing: Vec<AddedToken> = specials
        .into_iter()
        .filter(|t| {
            !existing
                .values()
                .any(|e| e.content == t.content && e.special)
        })
        .collect();
    if !missing.is_empty() {
        tok.add_special_tokens(&missing);
    }

    let token = |key: &str| config.get(key).and_then(added_token).map(|t| t.content);
    let bos_token = token("bos_token");
    let eos_token = token("eos_token");

    if let Some(Value::Bool(flag)) = config.get("add_bos_token") {
        let adds = match bos_token.as_deref().and_then(|b| tok.token_to_id(b)) {
            Some(bos) => tok
                .encode_fast("", true)
                .map(|e| e.get_ids().first() == Some(&bos))
                .unwrap_or(false),
            None => false,
        };
        if *flag != adds {
            tracing::info!(
                "tokenizer_config.json says add_bos_token={flag}, but tokenizer.json's post-processor {} BOS; \
                 following tokenizer.json as transformers does",
                if adds { "adds" } else { "does not add" }
            );
        }
    }

    let chat_template = chat_template(dir, &config)?;

    let gen_path = dir.join("generation_config.json");
    let eos_source = match read_json(&gen_path)? {
        Some(v) => Some(v),
        None => read_json(&dir.join("config.json"))?,
    };
    let extra_eos_ids = eos_source
        .as_ref()
        .and_then(|v| v.get("eos_token_id"))
        .map(ids_of)
        .unwrap_or_default();

    Ok(Parts {
        tok,
        bos_token,
        eos_token,
        unk_token: token("unk_token"),
        pad_token: token("pad_token"),
        extra_eos_ids,
        chat_template,
    })
}

/// A JSON file, or `None` when it does not exist.
fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::format(path, "JSON", e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// A special token given as a string or as an AddedToken object
/// (`{"content": .., "lstrip": .., ..}`); special and not normalized
/// unless the object says otherwise.
fn added_token(v: &Value) -> Option<AddedToken> {
    match v {
        Value::String(s) if !s.is_empty() => {
            Some(AddedToken::from(s.clone(), true).normalized(false))
        }
        Value::Object(o) => {
            let content = o.get("content")?.as_str().filter(|s| !s.is_empty())?;
            let flag =
                |k: &str, default: bool| o.get(k).and_then(Value::as_bool).unwrap_or(default);
            Some(
                AddedToken::from(content.to_string(), true)
                    .single_word(flag("single_word", false))
                    .lstrip(flag("lstrip", false))
                    .rstrip(flag("rstrip", false))
                    .normalized(flag("normalized", false)),
            )
        }
        _ => None,
    }
}

/// `eos_token_id` as an int or a list of ints.
fn ids_of(v: &Value) -> Vec<u32> {
    let one = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    match v {
        Value::Array(items) => items.iter().filter_map(one).collect(),
        other => one(other).into_iter().collect(),
    }
}

/// The chat template: `chat_template.jinja`, else `chat_template` of the config.
fn chat_template(dir: &Path, config: &Value) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    match std::fs::read_to_string(&jinja) {
        Ok(s) => return Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&jinja, e)),
    }
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            let named = |name: &str| {
                list.iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
            };
            match named("default") {
                Some(t) => Ok(Some(t.to_string())),
                None => {
                    let names: Vec<&str> = list
                        .iter()
                        .filter_map(|t| t.get("name").and_then(Value::as_str))
                        .collect();
                    tracing::warn!("tokenizer_config.json has chat templates {names:?} but none named \"default\"; using none");
                    Ok(None)
                }
            }
        }
        Some(_) => Err(Error::format(
            dir.join("tokenizer_config.json"),
            "tokenizer_config.json",
            "chat_template is neither a string nor a list of {name, template}",
        )),
    }
}
