//! Server-sent events: `data: {chunk}` per piece of text, keep-alive
//! comments while nothing is ready, an optional usage chunk with
//! `choices: []`, then `data: [DONE]`.
//!
//! The response stream owns the request's event receiver: when the client
//! disconnects, hyper drops the stream, the receiver goes with it, and the
//! model thread cancels the sequences before its next step.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use mm_engine::batch::TokenLogprobs;
use mm_engine::sched::FinishReason;
use serde_json::{json, Value};

use crate::gen::{event_error, Generation, UsageAcc};
use crate::worker::EventKind;

/// How one endpoint shapes its chunks' `choices` entries.
pub trait ChunkFormat: Send + 'static {
    /// The chunks' `object` (`chat.completion.chunk`, `text_completion`).
    const OBJECT: &'static str;
    /// Choice entries sent before any token (chat: the role; completions:
    /// the echoed prompt).
    fn start(&mut self, g: &Generation) -> Vec<Value>;
    /// The entries for a token of choice `index`, one chunk each (none to
    /// send nothing).
    fn token(
        &mut self,
        index: usize,
        token: u32,
        text: &str,
        logprobs: Option<&TokenLogprobs>,
    ) -> Vec<Value>;
    /// The last entries of choice `index`, the last one carrying its
    /// finish reason.
    fn finish(&mut self, index: usize, reason: FinishReason) -> Vec<Value>;
}

struct StreamState<F> {
    g: Generation,
    fmt: F,
    queue: VecDeque<Event>,
    acc: UsageAcc,
    left: usize,
    include_usage: bool,
    done: bool,
}

impl<F: ChunkFormat> StreamState<F> {
    fn chunk(&self, choices: Vec<Value>, usage: Option<Value>) -> Event {
        let mut c = json!({
            "id": self.g.id,
            "object": F::OBJECT,
            "created": self.g.created,
            "model": self.g.model,
            "choices": choices,
        });
        if let Some(u) = usage {
            c["usage"] = u;
        }
        Event::default().data(c.to_string())
    }

    /// Waits for the next engine event and queues what it produces.
    async fn advance(&mut self) {
        let Some(ev) = self.g.rx.recv().await else {
            // The model thread dropped the request (shutdown).
            let e = crate::error::ApiError::unavailable(
                "The server is shutting down; the request was cancelled.",
            );
            self.queue
                .push_back(Event::default().data(e.body().to_string()));
            self.end();
            return;
        };
        match ev.kind {
            EventKind::Token {
                token,
                text,
                logprobs,
            } => {
                for choice in self.fmt.token(ev.index, token, &text, logprobs.as_ref()) {
                    let c = self.chunk(vec![choice], None);
                    self.queue.push_back(c);
                }
            }
            EventKind::Done {
                reason,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
            } => {
                for choice in self.fmt.finish(ev.index, reason) {
                    let c = self.chunk(vec![choice], None);
                    self.queue.push_back(c);
                }
                self.acc
                    .add(ev.index, prompt_tokens, completion_tokens, cached_tokens);
                self.left = self.left.saturating_sub(1);
                if self.left == 0 {
                    if self.include_usage {
                        let u = self.chunk(Vec::new(), Some(self.acc.usage().json()));
                        self.queue.push_back(u);
                    }
                    self.end();
                }
            }
            EventKind::Error { message, client } => {
                let e = event_error(message, client);
                self.queue
                    .push_back(Event::default().data(e.body().to_string()));
                self.end();
            }
        }
    }

    fn end(&mut self) {
        self.queue.push_back(Event::default().data("[DONE]"));
        self.done = true;
    }
}

/// The SSE response for a submitted request.
pub fn respond<F: ChunkFormat>(
    g: Generation,
    mut fmt: F,
    include_usage: bool,
    keep_alive: Duration,
) -> Response {
    let acc = UsageAcc::new(&g);
    let left = g.num_choices();
    let first = fmt.start(&g);
    let mut st = StreamState {
        g,
        fmt,
        queue: VecDeque::new(),
        acc,
        left,
        include_usage,
        done: false,
    };
    for choice in first {
        let c = st.chunk(vec![choice], None);
        st.queue.push_back(c);
    }
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(ev) = st.queue.pop_front() {
                return Some((Ok::<Event, Infallible>(ev), st));
            }
            if st.done {
                return None;
            }
            st.advance().await;
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive"))
        .into_response()
}
