//! `POST /tokenize` and `POST /detokenize` (vLLM's shapes).

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::chat::{render, to_messages};
use super::completions::ids_from;
use super::AppState;
use crate::error::{ApiError, ApiJson};
use crate::gen::{check_model, ready};
use crate::protocol::{DetokenizeRequest, TokenizeRequest};

/// `{"prompt": ..., "add_special_tokens": true}` or `{"messages": [...],
/// "add_generation_prompt": true, "chat_template_kwargs": {...}}` →
/// `{"count", "max_model_len", "tokens"}`.
pub async fn tokenize(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    check_model(&state, req.model.as_deref())?;
    let info = ready(&state)?;
    let tok = &info.tokenizer;
    let ids = match (&req.prompt, &req.messages) {
        (Some(p), None) => tok
            .encode(p, req.add_special_tokens.unwrap_or(true))
            .map_err(|e| ApiError::invalid_param("prompt", format!("Cannot tokenize: {e}")))?,
        (None, Some(m)) => {
            let msgs = to_messages(m)?;
            let text = render(
                tok,
                &msgs,
                req.add_generation_prompt.unwrap_or(true),
                req.chat_template_kwargs.clone(),
            )?;
            tok.encode(&text, req.add_special_tokens.unwrap_or(false))
                .map_err(|e| ApiError::invalid_param("messages", format!("Cannot tokenize: {e}")))?
        }
        _ => {
            return Err(ApiError::bad_request(
                "Give exactly one of `prompt` and `messages`.",
            ))
        }
    };
    Ok(Json(json!({
        "count": ids.len(),
        "max_model_len": info.max_model_len,
        "tokens": ids,
    })))
}

/// `{"tokens": [...]}` → `{"prompt": text}` (special tokens kept).
pub async fn detokenize(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    check_model(&state, req.model.as_deref())?;
    let info = ready(&state)?;
    let ids = ids_from("tokens", &req.tokens, info.vocab_size)?;
    let text = info
        .tokenizer
        .decode(&ids, false)
        .map_err(|e| ApiError::invalid_param("tokens", format!("Cannot decode: {e}")))?;
    Ok(Json(json!({ "prompt": text })))
}
