//! The model thread's loop: take jobs, cancel those whose client left, run
//! one engine step, turn sampled tokens into text events, publish metrics.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use metrics_exporter_prometheus::PrometheusRecorder;
use mm_engine::batch::{BatchEngine, BatchRequest, TokenEvent};
use mm_engine::constrain::GrammarCompiler;
use mm_engine::sched::{FinishReason, SeqId};
use mm_engine::tokenizer::{StreamDecoder, Tokenizer};
use mm_engine::{ReasoningConfig, ReasoningParser, StopFilter};
use tokio::sync::mpsc;

use super::metrics::ServerMetrics;
use super::{EngineHandle, EventKind, Job, Loader, ModelInfo, Msg, SeqEvent, Shared, Status};
use crate::config::EngineOptions;

/// Starts the model thread; it loads the model with `load`, then serves
/// jobs until [`EngineHandle::shutdown`] or until every handle is dropped.
pub(crate) fn spawn(
    load: Loader,
    opts: EngineOptions,
    reasoning: ReasoningParser,
    model_name: String,
    recorder: PrometheusRecorder,
) -> std::io::Result<(EngineHandle, JoinHandle<()>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared::default());
    let handle = EngineHandle {
        tx,
        shared: shared.clone(),
    };
    let join = std::thread::Builder::new()
        .name("mm-model".into())
        .spawn(move || {
            let metrics = ServerMetrics::new(&recorder, &model_name);
            // A panic (a bug) must not leave /health saying 200: catch it,
            // mark the thread failed; the jobs' channels close on unwind.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(load, &opts, reasoning, &shared, rx, &metrics)
            }));
            match ran {
                Ok(Ok(())) => shared.set_status(Status::Stopped),
                Ok(Err(e)) => {
                    tracing::error!("model thread: {e}");
                    shared.fail(e);
                }
                Err(_) => {
                    tracing::error!("model thread panicked");
                    shared.fail("the model thread panicked".into());
                }
            }
        })?;
    Ok((handle, join))
}

/// A running sequence as the thread tracks it.
struct Live {
    job: Job,
    decoder: StreamDecoder,
    filter: StopFilter,
    generated: usize,
    cached_tokens: usize,
    first: Option<Instant>,
    last: Option<Instant>,
}

fn run(
    load: Loader,
    opts: &EngineOptions,
    reasoning: ReasoningParser,
    shared: &Shared,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    metrics: &ServerMetrics,
) -> Result<(), String> {
    let t0 = Instant::now();
    let (model, tok) = load().map_err(|e| format!("loading the model failed: {e:#}"))?;
    let cfg = opts.scheduler_config(&model)?;
    let mut engine = BatchEngine::new(&model, cfg.clone(), opts.kv_dtype)
        .map_err(|e| format!("creating the engine failed: {e}"))?;
    let grammar = GrammarCompiler::new(&tok).map_err(|e| e.to_string());
    if let Err(e) = &grammar {
        tracing::warn!("{e}");
    }
    let reasoning = match ReasoningConfig::detect(reasoning, &tok) {
        Ok(r) => {
            tracing::info!(
                "chat answers: reasoning between {} and {} goes to reasoning_content",
                r.open,
                r.close
            );
            Some(r)
        }
        Err(why) => {
            tracing::info!("chat answers: reasoning is not split ({why})");
            None
        }
    };
    let _ = shared.info.set(ModelInfo {
        tokenizer: tok.clone(),
        max_model_len: cfg.max_model_len,
        vocab_size: model.config.vocab_size.min(tok.vocab_size()),
        grammar,
        reasoning,
    });
    shared.set_status(Status::Ready);
    tracing::info!(
        "model ready in {:.1} s: {} KV blocks of {} tokens ({:?}), max_model_len {}, max_num_seqs {}, max_num_batched_tokens {}",
        t0.elapsed().as_secs_f64(),
        cfg.num_blocks,
        cfg.block_size,
        opts.kv_dtype,
        cfg.max_model_len,
        cfg.max_num_seqs,
        cfg.max_num_batched_tokens
    );

    let mut live: HashMap<SeqId, Live> = HashMap::new();
    let mut open = true;
    while open {
        // Intake: block while idle, else take what arrived.
        if live.is_empty() {
            match rx.blocking_recv() {
                Some(m) => open = take(m, &mut engine, &mut live, &tok, shared),
                None => open = false,
            }
        }
        while open {
            match rx.try_recv() {
                Ok(m) => open = take(m, &mut engine, &mut live, &tok, shared),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        if !open {
            break;
        }
        // Clients that went away: cancel before spending a step on them.
        let gone: Vec<SeqId> = live
            .iter()
            .filter(|(_, l)| l.job.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            if let Some(l) = live.remove(&id) {
                let _ = engine.cancel(id);
                end(&l, FinishReason::Abort, metrics);
            }
        }
        if !live.is_empty() {
            match engine.step() {
                Ok(events) => {
                    if events.is_empty() && engine.scheduler().stats().num_running == 0 {
                        // Nothing could be scheduled (should not happen:
                        // the scheduler refuses what can never fit); do not spin.
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    for ev in events {
                        on_token(ev, &mut engine, &mut live, metrics);
                    }
                }
                Err(e) => {
                    tracing::error!(
                        "engine step failed: {e}; failing its {} requests",
                        live.len()
                    );
                    for (id, l) in live.drain() {
                        let _ = engine.cancel(id);
                        let _ = l.job.events.send(SeqEvent {
                            index: l.job.index,
                            kind: EventKind::Error {
                                message: format!("the engine failed: {e}"),
                                client: false,
                            },
                        });
                        metrics.finished(FinishReason::Abort, l.job.arrived.elapsed());
                    }
                }
            }
        }
        let st = engine.scheduler().stats();
        shared
            .sched_waiting
            .store(st.num_waiting, Ordering::Release);
        metrics.publish(&st);
    }
    // Shutdown: cancel what runs; dropping the jobs closes their streams.
    for (id, l) in live.drain() {
        let _ = engine.cancel(id);
        end(&l, FinishReason::Abort, metrics);
    }
    metrics.publish(&engine.scheduler().stats());
    tracing::info!("model thread stopped");
    Ok(())
}

/// Handles one inbox message; false on shutdown.
fn take(
    m: Msg,
    engine: &mut BatchEngine,
    live: &mut HashMap<SeqId, Live>,
    tok: &Tokenizer,
    shared: &Shared,
) -> bool {
    let jobs = match m {
        Msg::Shutdown => return false,
        Msg::Submit(jobs) => jobs,
    };
    shared.inbox.fetch_sub(jobs.len(), Ordering::AcqRel);
    for mut job in jobs {
        let req = BatchRequest {
            prompt: job.prompt.clone(),
            max_new_tokens: job.max_tokens,
            sampling: job.sampling.clone(),
            eos: if job.ignore_eos {
                Vec::new()
            } else {
                tok.eos_ids().to_vec()
            },
            logprobs: job.logprobs,
            guide: job.guide.take(),
        };
        match engine.add(req) {
            Ok(id) => {
                let filter = StopFilter::new(job.stop.clone());
                live.insert(
                    id,
                    Live {
                        decoder: tok.stream_decoder(true),
                        filter,
                        generated: 0,
                        cached_tokens: 0,
                        first: None,
                        last: None,
                        job,
                    },
                );
            }
            Err(e) => {
                let _ = job.events.send(SeqEvent {
                    index: job.index,
                    kind: EventKind::Error {
                        message: e.to_string(),
                        client: true,
                    },
                });
            }
        }
    }
    true
}

/// A sampled token: its text (stop strings cut), events, metrics, and the
/// end of the sequence when it ends here.
fn on_token(
    ev: TokenEvent,
    engine: &mut BatchEngine,
    live: &mut HashMap<SeqId, Live>,
    metrics: &ServerMetrics,
) {
    let Some(l) = live.get_mut(&ev.id) else {
        return;
    };
    let now = Instant::now();
    l.generated += 1;
    l.cached_tokens = ev.cached_tokens;
    match l.last {
        None => {
            l.first = Some(now);
            metrics.first_token(l.job.prompt.len(), now - l.job.arrived);
        }
        Some(prev) => metrics.next_token(now - prev),
    }
    l.last = Some(now);

    let mut text = String::new();
    let mut hit = false;
    let mut add = |piece: Option<String>, l: &mut Live, hit: &mut bool| {
        if let Some(p) = piece {
            let (shown, h) = l.filter.push(&p);
            text.push_str(&shown);
            *hit |= h;
        }
    };
    match l.decoder.push(ev.token) {
        Ok(p) => add(p, l, &mut hit),
        Err(e) => tracing::warn!(
            "request {}: cannot decode token {}: {e}",
            l.job.request_id,
            ev.token
        ),
    }
    let mut reason = ev.finished;
    if hit {
        if reason.is_none() {
            // Ends the sequence now, freeing its blocks; the engine already
            // did when this token also ended it otherwise.
            let _ = engine.finish(ev.id, FinishReason::Stop);
        }
        reason = Some(FinishReason::Stop);
    } else if reason.is_some() {
        let rest = l.decoder.finish().unwrap_or(None);
        add(rest, l, &mut hit);
        if hit {
            reason = Some(FinishReason::Stop);
        } else {
            text.push_str(&l.filter.flush());
        }
    }
    let _ = l.job.events.send(SeqEvent {
        index: l.job.index,
        kind: EventKind::Token {
            token: ev.token,
            text,
            logprobs: ev.logprobs,
        },
    });
    if let Some(reason) = reason {
        if let Some(l) = live.remove(&ev.id) {
            let _ = l.job.events.send(SeqEvent {
                index: l.job.index,
                kind: EventKind::Done {
                    reason,
                    prompt_tokens: l.job.prompt.len(),
                    completion_tokens: l.generated,
                    cached_tokens: l.cached_tokens,
                },
            });
            end(&l, reason, metrics);
        }
    }
}

/// Records a finished (or cancelled) sequence: metrics and one log line.
fn end(l: &Live, reason: FinishReason, metrics: &ServerMetrics) {
    let e2e = l.job.arrived.elapsed();
    metrics.finished(reason, e2e);
    let ttft = l.first.map(|f| f - l.job.arrived);
    let decode = match (l.first, l.last) {
        (Some(f), Some(t)) if l.generated > 1 => {
            (l.generated - 1) as f64 / (t - f).as_secs_f64().max(1e-9)
        }
        _ => 0.0,
    };
    tracing::info!(
        "request {} choice {}: {} prompt tokens ({} cached), {} generated, finish {}, TTFT {}, decode {:.1} tok/s, total {:.3} s",
        l.job.request_id,
        l.job.index,
        l.job.prompt.len(),
        l.cached_tokens,
        l.generated,
        reason.as_str(),
        ttft.map_or("-".to_string(), |t| format!("{:.3} s", t.as_secs_f64())),
        decode,
        e2e.as_secs_f64()
    );
}
