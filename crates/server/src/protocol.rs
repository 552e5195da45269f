//! Request bodies of the OpenAI-compatible API, as serde types.
//!
//! Numbers are taken wide (`f64`, `i64`) and range-checked in
//! [`crate::params`], so an out-of-range value gets a message saying the
//! range rather than a type error. Unknown fields are ignored, as OpenAI's
//! and vLLM's servers do.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The generation settings shared by chat and text completions.
#[derive(Debug, Default, Deserialize)]
pub struct SamplingFields {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub logit_bias: Option<BTreeMap<String, f64>>,
    pub ignore_eos: Option<bool>,
    /// Structured output: `{"type": "text" | "json_object" | "json_schema",
    /// "json_schema": {"name", "schema", "strict"}}`; checked in
    /// [`crate::params`].
    pub response_format: Option<serde_json::Value>,
}

/// `stop`: one string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// Extra chat-template variables (`{"enable_thinking": false}`).
pub type TemplateKwargs = serde_json::Map<String, serde_json::Value>;

/// `POST /v1/chat/completions` (besides [`SamplingFields`]).
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    /// Variables for the chat template; they cannot replace `messages`
    /// or `add_generation_prompt`.
    pub chat_template_kwargs: Option<TemplateKwargs>,
}

/// One chat message. `content` may be absent or null for an assistant turn.
/// An assistant turn's reasoning comes as `reasoning_content` or
/// `reasoning` (vLLM's newer name); the template sees it as
/// `reasoning_content`.
#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    pub reasoning_content: Option<String>,
    pub reasoning: Option<String>,
}

/// Message content: a string, or a list of parts of which only text parts
/// are supported.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// `POST /v1/completions` (besides [`SamplingFields`]).
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: PromptField,
    /// Legacy: how many most likely tokens to list per position (0..=20).
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
}

/// `prompt`: a string, a list of strings, token ids, or lists of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<i64>),
    IdLists(Vec<Vec<i64>>),
}

/// `POST /tokenize`: a prompt, or chat messages rendered with the template.
#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<Message>>,
    pub add_special_tokens: Option<bool>,
    pub add_generation_prompt: Option<bool>,
    pub chat_template_kwargs: Option<TemplateKwargs>,
}

/// `POST /detokenize`.
#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<i64>,
}
