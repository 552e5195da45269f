//! `POST /v1/completions`: raw prompts (text or token ids, one or several),
//! `echo`, legacy log-probabilities; answered whole or streamed.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use mm_engine::batch::TokenLogprobs;
use mm_engine::sched::FinishReason;
use mm_engine::tokenizer::Tokenizer;
use serde_json::{json, Value};

use super::AppState;
use crate::error::{ApiError, ApiJson};
use crate::gen::{
    blocking, collect, compile_guide, finish_str, parse_request, request_id, submit, Generation,
};
use crate::logprobs::LegacyLogprobs;
use crate::params::top_logprobs;
use crate::protocol::{CompletionRequest, PromptField};
use crate::sse::{self, ChunkFormat};
use crate::worker::ModelInfo;

/// Checks token ids from a request.
pub fn ids_from(param: &str, ids: &[i64], vocab: usize) -> Result<Vec<u32>, ApiError> {
    ids.iter()
        .map(|&t| {
            if t < 0 || t as u64 >= vocab as u64 {
                Err(ApiError::invalid_param(
                    param,
                    format!("Token id {t} is outside the vocabulary of {vocab}."),
                ))
            } else {
                Ok(t as u32)
            }
        })
        .collect()
}

/// Each prompt's token ids and text (the text for `echo`).
fn prompts(field: &PromptField, info: &ModelInfo) -> Result<Vec<(Vec<u32>, String)>, ApiError> {
    let tok = &info.tokenizer;
    let encode = |s: &str| {
        tok.encode(s, true).map_err(|e| {
            ApiError::invalid_param("prompt", format!("Cannot tokenize the prompt: {e}"))
        })
    };
    let decode = |ids: &[u32]| {
        tok.decode(ids, false).map_err(|e| {
            ApiError::invalid_param("prompt", format!("Cannot decode the prompt: {e}"))
        })
    };
    let out: Vec<(Vec<u32>, String)> = match field {
        PromptField::Text(s) => vec![(encode(s)?, s.clone())],
        PromptField::Texts(v) => v
            .iter()
            .map(|s| Ok((encode(s)?, s.clone())))
            .collect::<Result<_, ApiError>>()?,
        PromptField::Ids(ids) => {
            let ids = ids_from("prompt", ids, info.vocab_size)?;
            let text = decode(&ids)?;
            vec![(ids, text)]
        }
        PromptField::IdLists(lists) => lists
            .iter()
            .map(|l| {
                let ids = ids_from("prompt", l, info.vocab_size)?;
                let text = decode(&ids)?;
                Ok((ids, text))
            })
            .collect::<Result<_, ApiError>>()?,
    };
    if out.is_empty() {
        return Err(ApiError::invalid_param(
            "prompt",
            "`prompt` must not be an empty list",
        ));
    }
    Ok(out)
}

pub async fn completions(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let (req, info, mut p) = parse_request::<CompletionRequest>(&state, &body)?;
    p.logprobs = req
        .logprobs
        .map(|k| top_logprobs("logprobs", k))
        .transpose()?;
    let echo = req.echo.unwrap_or(false);
    if echo && p.logprobs.is_some() {
        return Err(ApiError::invalid_param(
            "echo",
            "`echo` with `logprobs` is not supported: prompt log-probabilities are not computed",
        ));
    }
    compile_guide(info, &mut p).await?;
    let owned = info.clone();
    let ps = blocking(move || prompts(&req.prompt, &owned)).await?;
    let texts: Vec<String> = ps.iter().map(|(_, t)| t.clone()).collect();
    let ids: Vec<Vec<u32>> = ps.into_iter().map(|(i, _)| i).collect();
    let tok = info.tokenizer.clone();
    let mut g = submit(&state, info, request_id("cmpl-"), ids, &p)?;
    let echoed = |i: usize| -> String {
        match texts.get(i / p.n) {
            Some(t) if echo => t.clone(),
            _ => String::new(),
        }
    };
    if p.stream {
        let fmt = CompletionChunks {
            tok,
            logprobs: p.logprobs.is_some(),
            offsets: (0..g.num_choices())
                .map(|i| echoed(i).chars().count())
                .collect(),
            echo: (0..g.num_choices()).map(echoed).collect(),
        };
        return Ok(sse::respond(g, fmt, p.include_usage, state.cfg.keep_alive));
    }
    let (choices, usage) = collect(&mut g).await?;
    let choices: Vec<Value> = choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let prefix = echoed(i);
            let logprobs = if p.logprobs.is_some() {
                let mut lp = LegacyLogprobs::default();
                let mut offset = prefix.chars().count();
                for (id, text, l) in &c.tokens {
                    if let Some(l) = l {
                        lp.push(&tok, *id, l, offset);
                    }
                    offset += text.chars().count();
                }
                lp.json()
            } else {
                Value::Null
            };
            json!({
                "index": i,
                "text": format!("{prefix}{}", c.text),
                "logprobs": logprobs,
                "finish_reason": finish_str(c.finish),
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "id": g.id,
        "object": "text_completion",
        "created": g.created,
        "model": g.model,
        "choices": choices,
        "usage": usage.json(),
    }))
    .into_response())
}

/// Completions' stream chunks: the echoed prompt first (with `echo`), then
/// text pieces, then an empty text with the finish reason.
struct CompletionChunks {
    tok: Tokenizer,
    logprobs: bool,
    /// Characters emitted so far per choice (for `text_offset`).
    offsets: Vec<usize>,
    echo: Vec<String>,
}

impl ChunkFormat for CompletionChunks {
    const OBJECT: &'static str = "text_completion";

    fn start(&mut self, _g: &Generation) -> Vec<Value> {
        self.echo
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.is_empty())
            .map(|(i, t)| json!({"index": i, "text": t, "logprobs": null, "finish_reason": null}))
            .collect()
    }

    fn token(
        &mut self,
        index: usize,
        token: u32,
        text: &str,
        logprobs: Option<&TokenLogprobs>,
    ) -> Vec<Value> {
        let offset = self.offsets.get(index).copied().unwrap_or(0);
        if let Some(o) = self.offsets.get_mut(index) {
            *o += text.chars().count();
        }
        let lp = match (self.logprobs, logprobs) {
            (true, Some(l)) => {
                let mut lp = LegacyLogprobs::default();
                lp.push(&self.tok, token, l, offset);
                lp.json()
            }
            _ if text.is_empty() => return Vec::new(),
            _ => Value::Null,
        };
        vec![json!({"index": index, "text": text, "logprobs": lp, "finish_reason": null})]
    }

    fn finish(&mut self, index: usize, reason: FinishReason) -> Vec<Value> {
        vec![
            json!({"index": index, "text": "", "logprobs": null, "finish_reason": finish_str(Some(reason))}),
        ]
    }
}
