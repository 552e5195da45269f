//! Constrained decoding: structured output (JSON object, JSON schema,
//! regular expression, Lark grammar) enforced token by token with
//! `llguidance`, the engine mistral.rs, vLLM and SGLang use.
//!
//! A [`GrammarCompiler`] is built once per tokenizer: it turns every token
//! into the bytes it stands for (byte-level BPE through the GPT-2 byte
//! alphabet; SentencePiece through `<0xHH>` byte tokens and `▁` for space;
//! special tokens behind llguidance's marker byte so grammar text can never
//! produce them) and precomputes llguidance's token trie. Each request
//! compiles its [`Constraint`] into a [`Guide`]; before each sampled token
//! the guide sets the logits of every token the grammar cannot accept to
//! −∞ (end-of-sequence tokens only where the output is complete), and the
//! sampled token is then fed back to it.
//!
//! JSON comes out compact with a space after `,` and `:` (as Python's
//! `json.dumps` writes it): flexible whitespace lets small models pad with
//! newlines until the token budget runs out. A schema's own
//! `"x-guidance"` options override this.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use tokenizers::DecoderWrapper;

use mm_core::{Error, Result};

use crate::tokenizer::Tokenizer;

/// What the output must match.
#[derive(Clone, Debug, PartialEq)]
pub enum Constraint {
    /// Any JSON object (OpenAI `response_format: {"type": "json_object"}`).
    JsonObject,
    /// A JSON value valid under this JSON schema.
    JsonSchema(Value),
    /// Text matching this regular expression (Rust `regex` syntax).
    Regex(String),
    /// Text in the language of this Lark grammar (llguidance's dialect).
    Lark(String),
}

/// Compiles constraints for one tokenizer; cheap to clone (shared inside).
#[derive(Clone)]
pub struct GrammarCompiler {
    factory: Arc<ParserFactory>,
    eos: Vec<u32>,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler")
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

impl GrammarCompiler {
    /// Builds the token trie of `tok`. Fails for a tokenizer whose tokens
    /// cannot be mapped to bytes (neither byte-level nor byte-fallback) or
    /// that has no end-of-sequence token.
    pub fn new(tok: &Tokenizer) -> Result<Self> {
        let eos = tok.eos_ids().to_vec();
        let Some(&first_eos) = eos.first() else {
            return Err(unsupported("the tokenizer has no end-of-sequence token"));
        };
        let words = token_bytes(tok)?;
        let info = TokRxInfo::new(words.len() as u32, first_eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos);
        let byte_level = decoder_kind(tok.inner().get_decoder()).0;
        let env: TokEnv = Arc::new(Env {
            tok: tok.clone(),
            trie,
            byte_level,
        });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| unsupported(&format!("llguidance rejected the vocabulary: {e}")))?;
        factory.quiet();
        Ok(Self {
            factory: Arc::new(factory),
            eos,
        })
    }

    /// The end-of-sequence ids a finished output may end with.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// A fresh guide for `c`; an invalid schema, regex or grammar is an
    /// [`Error::Invalid`] naming the problem.
    pub fn compile(&self, c: &Constraint) -> Result<Guide> {
        let grammar = match c {
            Constraint::JsonObject => {
                TopLevelGrammar::from_json_schema(with_defaults(json!({"type": "object"})))
            }
            Constraint::JsonSchema(s) => {
                if !s.is_object() && !s.is_boolean() {
                    return Err(Error::Invalid(format!(
                        "a JSON schema must be an object, got {s}"
                    )));
                }
                TopLevelGrammar::from_json_schema(with_defaults(s.clone()))
            }
            Constraint::Regex(r) => TopLevelGrammar::from_regex(r),
            Constraint::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
        };
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| Error::Invalid(format!("invalid {}: {e}", c.kind())))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(Error::Invalid(format!("invalid {}: {e}", c.kind())));
        }
        Ok(Guide {
            m: matcher,
            eos: self.eos.clone(),
        })
    }
}

impl Constraint {
    fn kind(&self) -> &'static str {
        match self {
            Constraint::JsonObject | Constraint::JsonSchema(_) => "JSON schema",
            Constraint::Regex(_) => "regular expression",
            Constraint::Lark(_) => "grammar",
        }
    }
}

/// One request's grammar state.
#[derive(Clone)]
pub struct Guide {
    m: Matcher,
    eos: Vec<u32>,
}

impl std::fmt::Debug for Guide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guide")
            .field("stopped", &self.m.is_stopped())
            .finish_non_exhaustive()
    }
}

impl Guide {
    /// Sets every logit the grammar forbids next to −∞. The end-of-sequence
    /// ids stay allowed only where the output is complete. If the grammar
    /// is in an error state, only end-of-sequence stays allowed, so the
    /// sequence ends instead of producing text outside the grammar.
    pub fn mask(&mut self, logits: &mut [f32]) {
        let allowed = match self.m.compute_mask_or_eos() {
            Ok(v) if v.num_set() > 0 => v,
            Ok(_) | Err(_) => {
                if let Some(e) = self.m.get_error() {
                    tracing::warn!("constrained decoding failed, ending the output: {e}");
                }
                let mut v = llguidance::toktrie::SimpleVob::alloc(logits.len());
                for &t in &self.eos {
                    if (t as usize) < logits.len() {
                        v.allow_token(t);
                    }
                }
                v
            }
        };
        for (i, l) in logits.iter_mut().enumerate() {
            if i >= allowed.len() || !allowed.is_allowed(i as TokenId) {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    /// Feeds the sampled token to the grammar (end-of-sequence ids end the
    /// output and are not fed). A token the grammar rejects is an error.
    pub fn accept(&mut self, token: u32) -> Result<()> {
        if self.eos.contains(&token) {
            return Ok(());
        }
        self.m
            .consume_token(token)
            .map_err(|e| Error::Other(format!("the grammar rejected token {token}: {e}")))
    }

    /// Whether the grammar admits no further token (the output is complete
    /// and cannot be extended), so the sequence should end now.
    pub fn is_finished(&self) -> bool {
        self.m.is_stopped()
    }

    /// The end-of-sequence ids the guide allows at the end of the output.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }
}

fn unsupported(why: &str) -> Error {
    Error::Tokenizer(format!("structured output is not available: {why}"))
}

/// Compact JSON unless the schema sets its own llguidance options.
fn with_defaults(mut schema: Value) -> Value {
    if let Value::Object(o) = &mut schema {
        o.entry("x-guidance").or_insert_with(|| {
            json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
                "coerce_one_of": true,
            })
        });
    }
    schema
}

/// The llguidance view of our tokenizer.
struct Env {
    tok: Tokenizer,
    trie: TokTrie,
    byte_level: bool,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// Byte-level BPE tokenizes any text fragment as it would in context;
    /// other vocabularies (which prepend `▁` to a fragment) and non-UTF-8
    /// bytes take the trie's greedy tokenization.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        if self.byte_level {
            if let Ok(text) = std::str::from_utf8(s) {
                if let Ok(ids) = self.tok.encode(text, false) {
                    return ids;
                }
            }
        }
        self.trie.greedy_tokenize(s)
    }
}

/// (byte-level, byte-fallback) as the decoder chain says.
fn decoder_kind(d: Option<&DecoderWrapper>) -> (bool, bool) {
    match d {
        Some(DecoderWrapper::ByteLevel(_)) => (true, false),
        Some(DecoderWrapper::ByteFallback(_)) => (false, true),
        Some(DecoderWrapper::Sequence(s)) => {
            s.get_decoders().iter().fold((false, false), |(bl, bf), d| {
                let (a, b) = decoder_kind(Some(d));
                (bl || a, bf || b)
            })
        }
        _ => (false, false),
    }
}

/// The bytes every token id stands for; special tokens get llguidance's
/// marker byte in front, so no grammar can spell them.
fn token_bytes(tok: &Tokenizer) -> Result<Vec<Vec<u8>>> {
    let hf = tok.inner();
    let (byte_level, byte_fallback) = decoder_kind(hf.get_decoder());
    if !byte_level && !byte_fallback {
        return Err(unsupported(
            "the tokenizer is neither byte-level BPE nor SentencePiece with byte fallback",
        ));
    }
    let unicode_to_byte = gpt2_byte_alphabet();
    let added = hf.get_added_tokens_decoder();
    let n = tok.vocab_size().max(hf.get_vocab_size(true));
    let mut words = vec![Vec::new(); n];
    for (id, w) in words.iter_mut().enumerate() {
        let id32 = id as u32;
        let Some(name) = hf.id_to_token(id32) else {
            continue;
        };
        if tok.is_special(id32) || added.get(&id32).is_some_and(|a| a.special) {
            w.push(TokTrie::SPECIAL_TOKEN_MARKER);
            w.extend_from_slice(name.as_bytes());
        } else if added.contains_key(&id32) {
            w.extend_from_slice(name.as_bytes());
        } else if byte_level {
            // A name outside the byte alphabet cannot be produced by the
            // tokenizer either; leave it unreachable.
            let bytes: Option<Vec<u8>> = name
                .chars()
                .map(|c| unicode_to_byte.get(&c).copied())
                .collect();
            *w = bytes.unwrap_or_default();
        } else if let Some(b) = byte_token(&name) {
            w.push(b);
        } else {
            w.extend_from_slice(name.replace('▁', " ").as_bytes());
        }
    }
    Ok(words)
}

/// `<0xHH>` → the byte HH.
fn byte_token(name: &str) -> Option<u8> {
    let hex = name.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// GPT-2's printable stand-ins for the 256 byte values: the printable
/// Latin-1 bytes stand for themselves, the others map, in order, to
/// U+0100 onwards.
fn gpt2_byte_alphabet() -> std::collections::HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0x100u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (b as char, b)
            } else {
                let c = char::from_u32(next).expect("U+0100.. are chars");
                next += 1;
                (c, b)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_a_bijection() {
        let m = gpt2_byte_alphabet();
        assert_eq!(m.len(), 256);
        assert_eq!(m[&'Ġ'], b' ');
        assert_eq!(m[&'Ċ'], b'\n');
        assert_eq!(m[&'a'], b'a');
        let mut bytes: Vec<u8> = m.values().copied().collect();
        bytes.sort_unstable();
        bytes.dedup();
        assert_eq!(bytes.len(), 256);
    }

    #[test]
    fn byte_tokens_parse() {
        assert_eq!(byte_token("<0x0A>"), Some(b'\n'));
        assert_eq!(byte_token("<0xFF>"), Some(0xFF));
        assert_eq!(byte_token("<0x0A0>"), None);
        assert_eq!(byte_token("<0xZZ>"), None);
        assert_eq!(byte_token("hello"), None);
    }
}
