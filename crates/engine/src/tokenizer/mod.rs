//! Tokenizers: text ⇄ token ids, chat templates, streaming detokenization.
//!
//! A [`Tokenizer`] comes from a Hugging Face model directory
//! ([`Tokenizer::from_hf_dir`]: `tokenizer.json` plus the optional
//! `tokenizer_config.json`, `chat_template.jinja` and `generation_config.json`)
//! or from the tokenizer metadata of a GGUF file ([`Tokenizer::from_gguf_vocab`]
//! with a [`GgufVocab`] filled by the GGUF reader). Either way the work is done
//! by the `tokenizers` crate, so ids match what `transformers` and llama.cpp
//! produce for the same vocabulary.
//!
//! * [`Tokenizer::encode`] / [`Tokenizer::decode`]: ids for text and back.
//! * [`Tokenizer::render_chat`]: the model's chat template applied to a
//!   conversation, as `transformers`' `apply_chat_template(tokenize=False)`.
//! * [`StreamDecoder`]: text pieces for ids as they are generated, never
//!   splitting a UTF-8 character.

mod chat_template;
mod from_source;
mod gguf_vocab;
mod hf_dir;
mod merges;
mod pre_split;
mod pyfmt;
mod stream;
mod strftime;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use mm_core::{Error, Result};

pub use chat_template::{ChatMessage, ChatTemplate, ChatTemplateOptions, TemplateTokens};
pub use from_source::{gguf_vocab, load_for};
pub use gguf_vocab::{token_type, GgufVocab};
pub use stream::StreamDecoder;

/// A tokenizer plus what generation needs around it: special tokens, the
/// end-of-sequence ids and the chat template. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    tok: tokenizers::Tokenizer,
    vocab_size: usize,
    /// `special[id]`: the id is a special (control) token.
    special: Vec<bool>,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    add_bos: bool,
    tokens: TemplateTokens,
    chat_template: Option<String>,
    compiled: OnceLock<std::result::Result<ChatTemplate, String>>,
}

/// What a loader hands to [`Tokenizer::from_parts`].
pub(crate) struct Parts {
    pub tok: tokenizers::Tokenizer,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub pad_token: Option<String>,
    /// End-of-sequence ids beyond the one of `eos_token`, in order of preference.
    pub extra_eos_ids: Vec<u32>,
    pub chat_template: Option<String>,
}

impl Tokenizer {
    /// Loads a Hugging Face tokenizer directory: `tokenizer.json` (required),
    /// `tokenizer_config.json`, `chat_template.jinja`, `generation_config.json`
    /// and `config.json` (all optional).
    ///
    /// BOS/EOS are added by [`encode`](Self::encode) exactly as the
    /// post-processor of `tokenizer.json` says, which is what `transformers` 5
    /// does (it ignores `add_bos_token` in `tokenizer_config.json` when a
    /// `tokenizer.json` exists).
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        Self::from_parts(hf_dir::load(dir)?)
    }

    /// Builds the tokenizer a GGUF file's `tokenizer.*` metadata describes.
    /// Supports `tokenizer.ggml.model` = `gpt2` (byte-level BPE) and `llama`
    /// (sentencepiece-style BPE with byte fallback).
    pub fn from_gguf_vocab(vocab: GgufVocab) -> Result<Self> {
        Self::from_parts(gguf_vocab::build(vocab)?)
    }

    pub(crate) fn from_parts(p: Parts) -> Result<Self> {
        let Parts {
            tok,
            bos_token,
            eos_token,
            unk_token,
            pad_token,
            extra_eos_ids,
            chat_template,
        } = p;

        let model_vocab = tok.get_vocab(false);
        let added = tok.get_added_tokens_decoder();
        let max_id = model_vocab.values().chain(added.keys()).copied().max();
        let vocab_size = max_id.map_or(0, |m| m as usize + 1);
        if vocab_size == 0 {
            return Err(Error::Tokenizer("the vocabulary is empty".into()));
        }
        let mut special = vec![false; vocab_size];
        for (id, t) in &added {
            if t.special {
                special[*id as usize] = true;
            }
        }

        let id_of = |token: &Option<String>, what: &str| -> Option<u32> {
            let t = token.as_deref()?;
            let id = tok.token_to_id(t);
            if id.is_none() {
                tracing::warn!("{what} token {t:?} is not in the vocabulary; ignoring it");
            }
            id
        };
        let bos_id = id_of(&bos_token, "BOS");
        let mut eos_ids: Vec<u32> = id_of(&eos_token, "EOS").into_iter().collect();
        for id in extra_eos_ids {
            if (id as usize) >= vocab_size {
                tracing::warn!(
                    "end-of-sequence id {id} is outside the vocabulary ({vocab_size}); ignoring it"
                );
            } else if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }

        // Whether encode(.., true) puts BOS first, as the post-processor says.
        let add_bos = match bos_id {
            Some(bos) => tok
                .encode_fast("", true)
                .map(|e| e.get_ids().first() == Some(&bos))
                .map_err(|e| Error::Tokenizer(format!("the tokenizer cannot encode: {e}")))?,
            None => false,
        };

        let tokens = TemplateTokens {
            bos: bos_token,
            eos: eos_token,
            unk: unk_token,
            pad: pad_token,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                tok,
                vocab_size,
                special,
                bos_id,
                eos_ids,
                add_bos,
                tokens,
                chat_template,
                compiled: OnceLock::new(),
            }),
        })
    }

    /// Token ids of `text`. Special tokens written in the text (like
    /// `<|im_start|>`) become their ids. With `add_special`, BOS (and EOS)
    /// are added where the tokenizer is configured to add them.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .tok
            .encode_fast(text, add_special)
            .map_err(|e| Error::Tokenizer(format!("cannot encode text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; with `skip_special`, special tokens are left out.
    /// Fails on an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.check_ids(ids)?;
        self.inner
            .tok
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer(format!("cannot decode ids: {e}")))
    }

    pub(crate) fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&id| id as usize >= self.inner.vocab_size) {
            Some(id) => Err(Error::Tokenizer(format!(
                "token id {id} is outside the vocabulary (size {})",
                self.inner.vocab_size
            ))),
            None => Ok(()),
        }
    }

    /// Number of token ids: one more than the largest id, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.vocab_size
    }

    /// The beginning-of-sequence id, where the tokenizer has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.inner.bos_id
    }

    /// Whether [`encode`](Self::encode) with `add_special` puts BOS first.
    pub fn add_bos(&self) -> bool {
        self.inner.add_bos
    }

    /// Every id that ends generation: the EOS token first, then the others
    /// the model's files name (generation config, GGUF EOT/EOM).
    pub fn eos_ids(&self) -> &[u32] {
        &self.inner.eos_ids
    }

    /// Whether `id` ends generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.inner.eos_ids.contains(&id)
    }

    /// The vocabulary entry of `id` as stored (byte-level or `▁` spelling),
    /// not its decoded text.
    pub fn token_str(&self, id: u32) -> Option<String> {
        self.inner.tok.id_to_token(id)
    }

    /// The id of a vocabulary entry, spelled as stored.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.tok.token_to_id(token)
    }

    /// Whether `id` is a special token (control token; left out by
    /// `decode(.., skip_special = true)`).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .special
            .get(id as usize)
            .copied()
            .unwrap_or(false)
    }

    /// The BOS token's text, as chat templates see it.
    pub fn bos_token(&self) -> Option<String> {
        self.inner.tokens.bos.clone()
    }

    /// The EOS token's text, as chat templates see it.
    pub fn eos_token(&self) -> Option<String> {
        self.inner.tokens.eos.clone()
    }

    /// The chat template source, if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.inner.chat_template.as_deref()
    }

    /// This tokenizer with another chat template (compiled on first use).
    pub fn with_chat_template(&self, source: impl Into<String>) -> Tokenizer {
        let i = &self.inner;
        Tokenizer {
            inner: Arc::new(Inner {
                tok: i.tok.clone(),
                vocab_size: i.vocab_size,
                special: i.special.clone(),
                bos_id: i.bos_id,
                eos_ids: i.eos_ids.clone(),
                add_bos: i.add_bos,
                tokens: i.tokens.clone(),
                chat_template: Some(source.into()),
                compiled: OnceLock::new(),
            }),
        }
    }

    /// Renders `messages` with the model's chat template, as `transformers`'
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=..)`.
    /// Encode the result with `add_special = false`: the template writes the
    /// special tokens itself.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let opts = ChatTemplateOptions {
            add_generation_prompt,
            ..Default::default()
        };
        self.render_chat_with(messages, &opts)
    }

    /// [`render_chat`](Self::render_chat) with tools, documents and extra
    /// template variables.
    pub fn render_chat_with(
        &self,
        messages: &[ChatMessage],
        opts: &ChatTemplateOptions,
    ) -> Result<String> {
        self.compiled_template()?
            .render(messages, &self.inner.tokens, opts)
    }

    /// The rendered chat as token ids (no BOS added beyond what the template writes).
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text = self.render_chat(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }

    fn compiled_template(&self) -> Result<&ChatTemplate> {
        let Some(source) = self.inner.chat_template.as_deref() else {
            return Err(Error::Template(
                "this model has no chat template; use plain-text generation (`generate`) with a raw prompt, \
                 or supply a template"
                    .into(),
            ));
        };
        self.inner
            .compiled
            .get_or_init(|| {
                ChatTemplate::new(source).map_err(|e| match e {
                    Error::Template(msg) => msg,
                    other => other.to_string(),
                })
            })
            .as_ref()
            .map_err(|msg| Error::Template(msg.clone()))
    }

    /// A [`StreamDecoder`] over this tokenizer.
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder {
        StreamDecoder::new(self.clone(), skip_special)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner.tok
    }

    /// The whole vocabulary, added tokens included: entry → id.
    pub fn vocab(&self) -> HashMap<String, u32> {
        self.inner.tok.get_vocab(true)
    }
}

// A tokenizer is shared across threads (server workers, the generation loop).
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Tokenizer>();
    send_sync::<StreamDecoder>();
    send_sync::<ChatTemplate>();
};

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.inner.vocab_size)
            .field("bos_id", &self.inner.bos_id)
            .field("eos_ids", &self.inner.eos_ids)
            .field("add_bos", &self.inner.add_bos)
            .field("chat_template", &self.inner.chat_template.is_some())
            .finish()
    }
}
