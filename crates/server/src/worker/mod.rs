//! The model thread: it loads the model, owns the [`BatchEngine`] (which
//! borrows the model, so both live on this thread) and runs its steps while
//! there is work, blocking on its inbox when idle.
//!
//! HTTP handlers submit [`Job`]s (one per choice) through a tokio channel;
//! each job carries the sender of its request's event channel, on which
//! the thread sends [`SeqEvent`]s: the text of every sampled token
//! (detokenized incrementally, stop strings held back and cut) and a final
//! `Done`. When the handler goes away (client disconnected, streaming or
//! not) the receiver is dropped; the thread sees the closed channel before
//! its next step and cancels the sequence, freeing its blocks.

mod metrics;
mod run;

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use mm_engine::batch::TokenLogprobs;
use mm_engine::constrain::{GrammarCompiler, Guide};
use mm_engine::sched::FinishReason;
use mm_engine::tokenizer::Tokenizer;
use mm_engine::{ReasoningConfig, SamplingParams};
use mm_models::DecoderModel;
use tokio::sync::mpsc;

pub use self::metrics::recorder;
pub(crate) use run::spawn;

/// Loads the model and its tokenizer; runs on the model thread.
pub type Loader = Box<dyn FnOnce() -> anyhow::Result<(DecoderModel, Tokenizer)> + Send>;

/// What the HTTP side knows of the loaded model.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub tokenizer: Tokenizer,
    /// Longest prompt plus completion.
    pub max_model_len: usize,
    pub vocab_size: usize,
    /// Structured output for this tokenizer, or why it is unavailable.
    pub grammar: Result<GrammarCompiler, String>,
    /// How chat answers are split into reasoning and content; `None`:
    /// they are not.
    pub reasoning: Option<ReasoningConfig>,
}

/// Where the model thread is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Loading = 0,
    Ready = 1,
    Failed = 2,
    Stopped = 3,
}

/// State shared between the model thread and the handlers.
#[derive(Debug, Default)]
pub struct Shared {
    info: OnceLock<ModelInfo>,
    status: AtomicU8,
    /// Jobs sent but not yet taken by the model thread.
    inbox: AtomicUsize,
    /// Sequences the scheduler has not admitted yet.
    sched_waiting: AtomicUsize,
    /// Why the model thread failed.
    error: Mutex<Option<String>>,
}

impl Shared {
    pub fn status(&self) -> Status {
        match self.status.load(Ordering::Acquire) {
            0 => Status::Loading,
            1 => Status::Ready,
            2 => Status::Failed,
            _ => Status::Stopped,
        }
    }

    pub(crate) fn set_status(&self, s: Status) {
        self.status.store(s as u8, Ordering::Release);
    }

    /// Why the model thread failed, if it did.
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }

    pub(crate) fn fail(&self, message: String) {
        if let Ok(mut e) = self.error.lock() {
            *e = Some(message);
        }
        self.set_status(Status::Failed);
    }

    /// The model, once loaded.
    pub fn info(&self) -> Option<&ModelInfo> {
        self.info.get()
    }

    /// Sequences waiting: sent to the model thread and not yet scheduled.
    pub fn waiting(&self) -> usize {
        self.inbox.load(Ordering::Acquire) + self.sched_waiting.load(Ordering::Acquire)
    }
}

/// One sequence to generate (one choice of a request).
#[derive(Debug)]
pub struct Job {
    /// The request's id (for logs) and this choice's index in it.
    pub request_id: String,
    pub index: usize,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub ignore_eos: bool,
    pub stop: Vec<String>,
    pub logprobs: Option<usize>,
    /// Structured output: this choice's own grammar state.
    pub guide: Option<Guide>,
    pub events: mpsc::UnboundedSender<SeqEvent>,
    pub arrived: Instant,
}

/// An event of one choice.
#[derive(Debug)]
pub struct SeqEvent {
    pub index: usize,
    pub kind: EventKind,
}

#[derive(Debug)]
pub enum EventKind {
    /// A sampled token and the text it completes (possibly empty: part of
    /// a character, or held back as a possible stop string).
    Token {
        token: u32,
        text: String,
        logprobs: Option<TokenLogprobs>,
    },
    /// The sequence ended (after its last `Token`).
    Done {
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
        cached_tokens: usize,
    },
    /// The engine refused or failed the sequence; `client` marks a refusal
    /// caused by the request (answered 400), else it is a server fault.
    Error { message: String, client: bool },
}

/// Messages to the model thread.
pub(crate) enum Msg {
    Submit(Vec<Job>),
    Shutdown,
}

/// The handlers' side of the model thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::UnboundedSender<Msg>,
    shared: Arc<Shared>,
}

impl EngineHandle {
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Sends a request's jobs; false when the model thread is gone.
    pub fn submit(&self, jobs: Vec<Job>) -> bool {
        let n = jobs.len();
        self.shared.inbox.fetch_add(n, Ordering::AcqRel);
        if self.tx.send(Msg::Submit(jobs)).is_err() {
            self.shared.inbox.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Asks the model thread to cancel everything and stop.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
    }
}
