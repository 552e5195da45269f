//! `POST /v1/chat/completions`: messages rendered with the model's chat
//! template (generation prompt added, `chat_template_kwargs` as extra
//! variables), answered whole or streamed. A reasoning model's answer is
//! split (`mm_engine::reasoning`): its reasoning goes to `reasoning_content`
//! and `reasoning` (the same text under both names), the rest to `content`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use mm_engine::batch::TokenLogprobs;
use mm_engine::sched::FinishReason;
use mm_engine::tokenizer::{ChatMessage, ChatTemplateOptions, Tokenizer};
use mm_engine::{ReasoningSplitter, Split};
use serde_json::{json, Value};

use super::AppState;
use crate::error::{ApiError, ApiJson};
use crate::gen::{
    blocking, collect, compile_guide, finish_str, parse_request, request_id, submit, Generation,
};
use crate::logprobs::{chat_entry, chat_logprobs};
use crate::params::top_logprobs;
use crate::protocol::{ChatRequest, Content, Message, TemplateKwargs};
use crate::sse::{self, ChunkFormat};

/// Messages as the chat template takes them: roles system, user and
/// assistant (`developer` is a system message); text content only; the
/// reasoning of a turn (`reasoning_content`, else `reasoning`) as
/// `reasoning_content`.
pub fn to_messages(msgs: &[Message]) -> Result<Vec<ChatMessage>, ApiError> {
    if msgs.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "`messages` must hold at least one message",
        ));
    }
    let mut out = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::invalid_param(
                    &format!("messages[{i}].role"),
                    format!("Unsupported role {other:?}: use system, user or assistant"),
                ))
            }
        };
        let content = match &m.content {
            None => String::new(),
            Some(Content::Text(s)) => s.clone(),
            Some(Content::Parts(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => texts.push(t.as_str()),
                        ("text", None) => {
                            return Err(ApiError::invalid_param(
                                &format!("messages[{i}].content[{j}].text"),
                                "a text part needs `text`",
                            ))
                        }
                        (kind, _) => {
                            return Err(ApiError::invalid_param(
                                &format!("messages[{i}].content[{j}].type"),
                                format!("Unsupported content part type {kind:?}: only text parts are supported"),
                            ))
                        }
                    }
                }
                texts.join("\n")
            }
        };
        let mut msg = ChatMessage::new(role, content);
        msg.reasoning_content = m.reasoning_content.clone().or_else(|| m.reasoning.clone());
        out.push(msg);
    }
    Ok(out)
}

/// The conversation rendered with the model's chat template, the request's
/// `chat_template_kwargs` as extra variables; a template error is a 400.
/// CPU work: call it on the blocking pool.
pub fn render(
    tok: &Tokenizer,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    kwargs: Option<TemplateKwargs>,
) -> Result<String, ApiError> {
    let opts = ChatTemplateOptions {
        add_generation_prompt,
        extra: kwargs.unwrap_or_default(),
        ..Default::default()
    };
    tok.render_chat_with(messages, &opts).map_err(|e| {
        ApiError::invalid_param("messages", format!("Cannot apply the chat template: {e}"))
    })
}

pub async fn chat_completions(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let (req, info, mut p) = parse_request::<ChatRequest>(&state, &body)?;
    let want = req.logprobs.unwrap_or(false);
    p.logprobs = match req.top_logprobs {
        Some(k) => {
            let k = top_logprobs("top_logprobs", k)?;
            if !want {
                return Err(ApiError::invalid_param(
                    "top_logprobs",
                    "`top_logprobs` needs `logprobs: true`",
                ));
            }
            Some(k)
        }
        None => want.then_some(0),
    };
    compile_guide(info, &mut p).await?;
    let messages = to_messages(&req.messages)?;
    let kwargs = req.chat_template_kwargs;
    let tok = info.tokenizer.clone();
    let t = tok.clone();
    let (prompt, ids) = blocking(move || {
        let prompt = render(&t, &messages, true, kwargs)?;
        let ids = t
            .encode(&prompt, false)
            .map_err(|e| ApiError::invalid_param("messages", format!("Cannot tokenize: {e}")))?;
        Ok((prompt, ids))
    })
    .await?;
    // Where the prompt leaves off decides where the answer starts. A
    // grammar constrains the answer from its first token, so a constrained
    // answer has no reasoning: it is all content.
    let splitter = match (&info.reasoning, &p.guide) {
        (Some(r), None) => Some(r.splitter(&prompt)),
        _ => None,
    };
    let mut g = submit(&state, info, request_id("chatcmpl-"), vec![ids], &p)?;
    if p.stream {
        let fmt = ChatChunks {
            tok,
            logprobs: want,
            splitters: splitter.map(|s| vec![s; g.num_choices()]),
        };
        return Ok(sse::respond(g, fmt, p.include_usage, state.cfg.keep_alive));
    }
    let (choices, usage) = collect(&mut g).await?;
    let choices: Vec<Value> = choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let logprobs = if want {
                chat_logprobs(&tok, c.tokens.iter().map(|(id, _, lp)| (*id, lp.as_ref())))
            } else {
                Value::Null
            };
            let split = match &splitter {
                Some(s) => s.clone().split_all(&c.text),
                None => Split::content_only(c.text),
            };
            let mut message = json!({"role": "assistant", "content": split.content});
            add_reasoning(&mut message, &split.reasoning);
            json!({
                "index": i,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": finish_str(c.finish),
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "id": g.id,
        "object": "chat.completion",
        "created": g.created,
        "model": g.model,
        "choices": choices,
        "usage": usage.json(),
    }))
    .into_response())
}

/// Sets `reasoning_content` and `reasoning` of a message or delta, unless
/// there is no reasoning.
fn add_reasoning(message: &mut Value, reasoning: &str) {
    if !reasoning.is_empty() {
        message["reasoning_content"] = json!(reasoning);
        message["reasoning"] = json!(reasoning);
    }
}

/// The deltas for a piece of a choice's answer: reasoning first, then
/// content, one delta each; none for an empty piece.
fn deltas(split: Split) -> Vec<Value> {
    let mut out = Vec::new();
    if !split.reasoning.is_empty() {
        let mut d = json!({});
        add_reasoning(&mut d, &split.reasoning);
        out.push(d);
    }
    if !split.content.is_empty() {
        out.push(json!({"content": split.content}));
    }
    out
}

/// Chat's stream chunks: a role delta first, then reasoning and content
/// deltas, then an empty delta with the finish reason.
struct ChatChunks {
    tok: Tokenizer,
    logprobs: bool,
    /// One splitter per choice, for a reasoning model.
    splitters: Option<Vec<ReasoningSplitter>>,
}

impl ChatChunks {
    fn splitter(&mut self, index: usize) -> Option<&mut ReasoningSplitter> {
        self.splitters.as_mut().and_then(|s| s.get_mut(index))
    }

    fn entry(index: usize, delta: Value, logprobs: Value) -> Value {
        json!({
            "index": index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": null,
        })
    }
}

impl ChunkFormat for ChatChunks {
    const OBJECT: &'static str = "chat.completion.chunk";

    fn start(&mut self, g: &Generation) -> Vec<Value> {
        (0..g.num_choices())
            .map(|i| Self::entry(i, json!({"role": "assistant", "content": ""}), Value::Null))
            .collect()
    }

    fn token(
        &mut self,
        index: usize,
        token: u32,
        text: &str,
        logprobs: Option<&TokenLogprobs>,
    ) -> Vec<Value> {
        let split = match self.splitter(index) {
            Some(s) => s.push(text),
            None => Split::content_only(text),
        };
        let mut deltas = deltas(split);
        // The token's log-probabilities ride on its last delta.
        let lp = match (self.logprobs, logprobs) {
            (true, Some(lp)) => json!({"content": [chat_entry(&self.tok, token, lp)]}),
            _ => Value::Null,
        };
        if deltas.is_empty() {
            if lp.is_null() {
                return Vec::new();
            }
            deltas.push(json!({"content": ""}));
        }
        let last = deltas.len() - 1;
        deltas
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                let lp = if i == last { lp.clone() } else { Value::Null };
                Self::entry(index, d, lp)
            })
            .collect()
    }

    fn finish(&mut self, index: usize, reason: FinishReason) -> Vec<Value> {
        let held = self.splitter(index).map(|s| s.finish()).unwrap_or_default();
        let mut out: Vec<Value> = deltas(held)
            .into_iter()
            .map(|d| Self::entry(index, d, Value::Null))
            .collect();
        out.push(json!({
            "index": index,
            "delta": {},
            "logprobs": null,
            "finish_reason": finish_str(Some(reason)),
        }));
        out
    }
}
