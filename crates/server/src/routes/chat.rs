//! `POST /v1/chat/completions`: messages rendered with the model's chat
//! template (generation prompt added), answered whole or streamed.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use mm_engine::batch::TokenLogprobs;
use mm_engine::sched::FinishReason;
use mm_engine::tokenizer::{ChatMessage, Tokenizer};
use serde_json::{json, Value};

use super::AppState;
use crate::error::{ApiError, ApiJson};
use crate::gen::{
    blocking, collect, compile_guide, finish_str, parse_request, request_id, submit, Generation,
};
use crate::logprobs::{chat_entry, chat_logprobs};
use crate::params::top_logprobs;
use crate::protocol::{ChatRequest, Content, Message};
use crate::sse::{self, ChunkFormat};

/// Messages as the chat template takes them: roles system, user and
/// assistant (`developer` is a system message); text content only.
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
        out.push(ChatMessage::new(role, content));
    }
    Ok(out)
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
    let tok = info.tokenizer.clone();
    let t = tok.clone();
    let ids = blocking(move || {
        t.encode_chat(&messages, true).map_err(|e| {
            ApiError::invalid_param("messages", format!("Cannot apply the chat template: {e}"))
        })
    })
    .await?;
    let mut g = submit(&state, info, request_id("chatcmpl-"), vec![ids], &p)?;
    if p.stream {
        let fmt = ChatChunks {
            tok,
            logprobs: want,
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
            json!({
                "index": i,
                "message": {"role": "assistant", "content": c.text},
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

/// Chat's stream chunks: a role delta first, then content deltas, then an
/// empty delta with the finish reason.
struct ChatChunks {
    tok: Tokenizer,
    logprobs: bool,
}

impl ChunkFormat for ChatChunks {
    const OBJECT: &'static str = "chat.completion.chunk";

    fn start(&mut self, g: &Generation) -> Vec<Value> {
        (0..g.num_choices())
            .map(|i| {
                json!({
                    "index": i,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": null,
                    "finish_reason": null,
                })
            })
            .collect()
    }

    fn token(
        &mut self,
        index: usize,
        token: u32,
        text: &str,
        logprobs: Option<&TokenLogprobs>,
    ) -> Option<Value> {
        let lp = match (self.logprobs, logprobs) {
            (true, Some(lp)) => json!({"content": [chat_entry(&self.tok, token, lp)]}),
            _ if text.is_empty() => return None,
            _ => Value::Null,
        };
        Some(json!({
            "index": index,
            "delta": {"content": text},
            "logprobs": lp,
            "finish_reason": null,
        }))
    }

    fn finish(&mut self, index: usize, reason: FinishReason) -> Value {
        json!({
            "index": index,
            "delta": {},
            "logprobs": null,
            "finish_reason": finish_str(Some(reason)),
        })
    }
}
