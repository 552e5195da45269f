//! Log-probabilities in OpenAI's two shapes: chat's
//! `logprobs.content[{token, logprob, bytes, top_logprobs}]` and the legacy
//! completions' `{tokens, token_logprobs, top_logprobs, text_offset}`.

use mm_engine::batch::TokenLogprobs;
use mm_engine::tokenizer::Tokenizer;
use serde_json::{json, Map, Value};

/// A token's text as the logprobs report it (special tokens included).
fn token_text(tok: &Tokenizer, id: u32) -> String {
    tok.decode(&[id], false).unwrap_or_default()
}

/// OpenAI reports `-9999.0` where a probability is zero.
fn finite(lp: f32) -> f64 {
    if lp.is_finite() {
        lp as f64
    } else {
        -9999.0
    }
}

/// One entry of chat's `logprobs.content`.
pub fn chat_entry(tok: &Tokenizer, id: u32, lp: &TokenLogprobs) -> Value {
    let entry = |id: u32, lp: f32| {
        let t = token_text(tok, id);
        json!({"token": t, "logprob": finite(lp), "bytes": t.as_bytes()})
    };
    let mut e = entry(id, lp.logprob);
    e["top_logprobs"] = Value::Array(lp.top.iter().map(|&(i, l)| entry(i, l)).collect());
    e
}

/// Chat's `logprobs` object for these tokens (`null` when not asked for).
pub fn chat_logprobs<'a>(
    tok: &Tokenizer,
    tokens: impl Iterator<Item = (u32, Option<&'a TokenLogprobs>)>,
) -> Value {
    let content: Vec<Value> = tokens
        .filter_map(|(id, lp)| lp.map(|lp| chat_entry(tok, id, lp)))
        .collect();
    json!({ "content": content })
}

/// Builds the legacy completions `logprobs` object.
#[derive(Default)]
pub struct LegacyLogprobs {
    tokens: Vec<Value>,
    token_logprobs: Vec<Value>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<Value>,
}

impl LegacyLogprobs {
    /// Adds a token whose text starts at character `offset` of the output.
    pub fn push(&mut self, tok: &Tokenizer, id: u32, lp: &TokenLogprobs, offset: usize) {
        self.tokens.push(json!(token_text(tok, id)));
        self.token_logprobs.push(json!(finite(lp.logprob)));
        let mut top = Map::new();
        for &(i, l) in &lp.top {
            top.insert(token_text(tok, i), json!(finite(l)));
        }
        // The sampled token is always listed, as OpenAI does.
        top.entry(token_text(tok, id))
            .or_insert(json!(finite(lp.logprob)));
        self.top_logprobs.push(Value::Object(top));
        self.text_offset.push(json!(offset));
    }

    pub fn json(self) -> Value {
        json!({
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        })
    }
}
