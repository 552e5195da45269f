//! Submitting a request's sequences to the model thread and gathering
//! their events, shared by chat and text completions.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use mm_engine::batch::TokenLogprobs;
use mm_engine::sched::FinishReason;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::error::{from_value, ApiError};
use crate::params::{gen_params, GenParams};
use crate::protocol::SamplingFields;
use crate::routes::AppState;
use crate::worker::{EventKind, Job, ModelInfo, SeqEvent, Status};

/// A submitted request: its identity and the events of its choices.
/// Dropping it (the client went away) cancels every choice.
pub struct Generation {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub rx: mpsc::UnboundedReceiver<SeqEvent>,
    /// Choices per prompt; choice `i` belongs to prompt `i / n`.
    pub n: usize,
    pub prompts: Vec<Vec<u32>>,
}

impl Generation {
    pub fn num_choices(&self) -> usize {
        self.n * self.prompts.len()
    }
}

/// A random request id with OpenAI's prefix (`chatcmpl-`, `cmpl-`).
pub fn request_id(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::random::<u128>())
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The loaded model, or 503 while it loads (or after it failed).
pub fn ready(state: &AppState) -> Result<&ModelInfo, ApiError> {
    let shared = state.engine.shared();
    match (shared.status(), shared.info()) {
        (Status::Ready, Some(info)) => Ok(info),
        (Status::Loading, _) => Err(ApiError::unavailable("The model is still loading.")),
        _ => Err(ApiError::unavailable("The model is not available.")),
    }
}

/// 404 unless `model` is absent or the served name.
pub fn check_model(state: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if m != state.cfg.served_model_name => {
            Err(ApiError::model_not_found(m, &state.cfg.served_model_name))
        }
        _ => Ok(()),
    }
}

/// Most sequences one request may start (prompts × `n`).
pub const MAX_SEQUENCES: usize = 1024;

/// Runs CPU-heavy request preparation (chat templates, tokenizing a long
/// prompt) on tokio's blocking pool, so it never stalls the connections
/// the async workers serve.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("preparing the request failed: {e}")))?
}

/// The start of every generation route: the body as the shared sampling
/// fields and the route's own request type `R`, the model checked (404)
/// and loaded (503), the sampling settings range-checked (400).
pub fn parse_request<'a, R: serde::de::DeserializeOwned>(
    state: &'a AppState,
    body: &Value,
) -> Result<(R, &'a ModelInfo, GenParams), ApiError> {
    let fields: SamplingFields = from_value(body)?;
    let req: R = from_value(body)?;
    check_model(state, fields.model.as_deref())?;
    let info = ready(state)?;
    let p = gen_params(&fields, info.vocab_size)?;
    Ok((req, info, p))
}

/// Compiles the request's `response_format` for the model's tokenizer
/// (on the blocking pool: a large schema takes a while); an invalid
/// schema is a 400 naming `response_format`.
pub async fn compile_guide(info: &ModelInfo, p: &mut GenParams) -> Result<(), ApiError> {
    let Some(c) = p.constraint.clone() else {
        return Ok(());
    };
    let compiler = info.grammar.clone().map_err(|e| {
        ApiError::invalid_param(
            "response_format",
            format!("Structured output is not supported for this model: {e}"),
        )
    })?;
    let guide = blocking(move || {
        compiler.compile(&c).map_err(|e| {
            let why = match e {
                mm_core::Error::Invalid(m) => m,
                e => e.to_string(),
            };
            ApiError::invalid_param("response_format", format!("`response_format`: {why}"))
        })
    })
    .await?;
    p.guide = Some(guide);
    Ok(())
}

/// Checks each prompt against the context, applies the queue limit and
/// sends `p.n` sequences per prompt to the model thread.
pub fn submit(
    state: &AppState,
    info: &ModelInfo,
    id: String,
    prompts: Vec<Vec<u32>>,
    p: &GenParams,
) -> Result<Generation, ApiError> {
    let ctx = info.max_model_len;
    let mut budgets = Vec::with_capacity(prompts.len());
    for prompt in &prompts {
        let len = prompt.len();
        if len == 0 {
            return Err(
                ApiError::bad_request("The prompt is empty (no tokens).").with_param("prompt")
            );
        }
        if let Some(t) = prompt.iter().find(|&&t| t as usize >= info.vocab_size) {
            return Err(ApiError::invalid_param(
                "prompt",
                format!(
                    "Token id {t} is outside the vocabulary of {}.",
                    info.vocab_size
                ),
            ));
        }
        let max_tokens = match p.max_tokens {
            _ if len >= ctx => {
                return Err(context_error(ctx, len, p.max_tokens.unwrap_or(1)));
            }
            Some(m) if len.saturating_add(m) > ctx => return Err(context_error(ctx, len, m)),
            Some(m) => m,
            None => ctx - len,
        };
        budgets.push(max_tokens);
    }
    let total = p.n.saturating_mul(prompts.len());
    if total > MAX_SEQUENCES {
        return Err(ApiError::bad_request(format!(
            "The request asks for {total} sequences (prompts × n); at most {MAX_SEQUENCES} are allowed."
        )));
    }
    if let Some(q) = state.cfg.max_queue {
        let waiting = state.engine.shared().waiting();
        if waiting >= q {
            return Err(ApiError::unavailable(format!(
                "The server is busy: {waiting} sequences are waiting (--max-queue {q}); retry later."
            )));
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let arrived = Instant::now();
    let mut jobs = Vec::with_capacity(total);
    for (pi, prompt) in prompts.iter().enumerate() {
        for j in 0..p.n {
            let index = pi * p.n + j;
            jobs.push(Job {
                request_id: id.clone(),
                index,
                prompt: prompt.clone(),
                max_tokens: budgets[pi],
                sampling: p.sampling_for(j),
                ignore_eos: p.ignore_eos,
                stop: p.stop.clone(),
                logprobs: p.logprobs,
                guide: p.guide.clone(),
                events: tx.clone(),
                arrived,
            });
        }
    }
    if !state.engine.submit(jobs) {
        return Err(ApiError::unavailable("The model thread has stopped."));
    }
    Ok(Generation {
        id,
        created: unix_now(),
        model: state.cfg.served_model_name.clone(),
        rx,
        n: p.n,
        prompts,
    })
}

fn context_error(ctx: usize, prompt: usize, completion: usize) -> ApiError {
    ApiError::bad_request(format!(
        "This model's maximum context length is {ctx} tokens. However, you requested {} tokens ({prompt} in the prompt, {completion} for the completion). Please reduce the prompt or max_tokens.",
        prompt.saturating_add(completion)
    ))
    .with_code("context_length_exceeded")
}

/// One finished choice.
#[derive(Debug, Default)]
pub struct ChoiceOut {
    pub text: String,
    /// Each token's id, its text (as emitted) and log-probabilities.
    pub tokens: Vec<(u32, String, Option<TokenLogprobs>)>,
    pub finish: Option<FinishReason>,
}

/// Token counts of a request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
}

impl Usage {
    pub fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }
}

/// Adds up usage as choices finish: each prompt counted once.
#[derive(Debug)]
pub struct UsageAcc {
    n: usize,
    prompts: Vec<Option<(usize, usize)>>,
    completion: usize,
}

impl UsageAcc {
    pub fn new(g: &Generation) -> Self {
        Self {
            n: g.n,
            prompts: vec![None; g.prompts.len()],
            completion: 0,
        }
    }

    pub fn add(&mut self, index: usize, prompt: usize, completion: usize, cached: usize) {
        self.completion += completion;
        if let Some(slot) = self.prompts.get_mut(index / self.n.max(1)) {
            let (p, c) = slot.get_or_insert((prompt, cached));
            *p = prompt;
            *c = (*c).max(cached);
        }
    }

    pub fn usage(&self) -> Usage {
        let (mut p, mut c) = (0, 0);
        for (pp, cc) in self.prompts.iter().flatten() {
            p += pp;
            c += cc;
        }
        Usage {
            prompt_tokens: p,
            completion_tokens: self.completion,
            cached_tokens: c,
        }
    }
}

/// Maps an engine error event to the answer.
pub fn event_error(message: String, client: bool) -> ApiError {
    if client {
        ApiError::bad_request(message)
    } else {
        ApiError::internal(message)
    }
}

/// Waits for every choice to finish.
pub async fn collect(g: &mut Generation) -> Result<(Vec<ChoiceOut>, Usage), ApiError> {
    let mut out: Vec<ChoiceOut> = (0..g.num_choices()).map(|_| ChoiceOut::default()).collect();
    let mut acc = UsageAcc::new(g);
    let mut left = out.len();
    while left > 0 {
        let Some(ev) = g.rx.recv().await else {
            return Err(ApiError::unavailable(
                "The server is shutting down; the request was cancelled.",
            ));
        };
        let Some(c) = out.get_mut(ev.index) else {
            continue;
        };
        match ev.kind {
            EventKind::Token {
                token,
                text,
                logprobs,
            } => {
                c.text.push_str(&text);
                c.tokens.push((token, text, logprobs));
            }
            EventKind::Done {
                reason,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
            } => {
                c.finish = Some(reason);
                acc.add(ev.index, prompt_tokens, completion_tokens, cached_tokens);
                left -= 1;
            }
            EventKind::Error { message, client } => return Err(event_error(message, client)),
        }
    }
    Ok((out, acc.usage()))
}

/// OpenAI's `finish_reason`.
pub fn finish_str(r: Option<FinishReason>) -> Value {
    match r {
        Some(FinishReason::Stop) => json!("stop"),
        Some(FinishReason::Length) => json!("length"),
        Some(FinishReason::Abort) => json!("abort"),
        None => Value::Null,
    }
}
