//! The batched execution loop: many requests, one forward step at a time.
//!
//! Each [`BatchEngine::step`] asks the [`Scheduler`] for a plan (decodes
//! first, then prefill chunks within the token budget; continuous batching:
//! requests join and leave at every step), flattens it into one
//! [`mm_models::Step`] (ids, positions, KV slots, block tables), runs
//! [`DecoderModel::forward_step`] over the shared [`PagedKv`] and samples
//! the next token of every sequence whose prompt is complete with that
//! request's own [`Sampler`] (its parameters and seed): on the backend
//! ([`mm_core::Device::sample`]) for rows that need no host logits, so only
//! the sampled ids leave the step, on the host for rows with a grammar mask
//! or log-probabilities (only those rows read back). The KV cache stays
//! where the backend keeps it.
//!
//! End of a sequence: its token budget (the scheduler finishes it), an EOS
//! token, or the caller ([`BatchEngine::finish`] for stop strings,
//! [`BatchEngine::cancel`] for a client that went away); either way its
//! blocks are freed at once.

use std::collections::HashMap;

use rayon::prelude::*;

use mm_core::{Error, KvDType, PagedBatch, Result, RowKind, SeqSpan, Tensor};
use mm_models::{DecoderModel, PagedKv, Step};

use crate::constrain::Guide;
use crate::sampler::{Sampler, SamplingParams};
use crate::sched::{FinishReason, Request, Scheduler, SchedulerConfig, SeqId, StepPlan};

/// A request as the engine takes it.
#[derive(Clone, Debug, Default)]
pub struct BatchRequest {
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Token ids that end the sequence (emitted, then finished as
    /// [`FinishReason::Stop`]); empty to ignore EOS.
    pub eos: Vec<u32>,
    /// Report each sampled token's log-probability and this many most
    /// likely alternatives ([`TokenEvent::logprobs`]); `None`: none.
    pub logprobs: Option<usize>,
    /// Structured output: only tokens this grammar accepts are sampled,
    /// and the sequence ends (as [`FinishReason::Stop`]) when the output is
    /// complete. With a guide, EOS ends the sequence even when `eos` is
    /// empty (the guide's own end-of-sequence ids are used).
    pub guide: Option<Guide>,
}

/// Log-probabilities of one sampled token under the model's distribution
/// (log-softmax of the raw logits, before penalties, temperature or
/// truncation: what OpenAI-compatible servers report).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    /// Of the sampled token.
    pub logprob: f32,
    /// The most likely tokens, most likely first: `(id, logprob)`.
    pub top: Vec<(u32, f32)>,
}

/// One sampled token of one sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenEvent {
    pub id: SeqId,
    pub token: u32,
    /// Set when this token ends the sequence.
    pub finished: Option<FinishReason>,
    /// When the request asked for them.
    pub logprobs: Option<TokenLogprobs>,
    /// Prompt tokens served from the prefix cache when the sequence was
    /// first admitted (`usage.prompt_tokens_details.cached_tokens`).
    pub cached_tokens: usize,
}

struct Live {
    sampler: Sampler,
    eos: Vec<u32>,
    logprobs: Option<usize>,
    guide: Option<Guide>,
}

/// The step loop over one model and one paged KV cache.
pub struct BatchEngine<'m> {
    model: &'m DecoderModel,
    kv: PagedKv,
    sched: Scheduler,
    live: HashMap<SeqId, Live>,
    device_sampling: bool,
}

impl<'m> BatchEngine<'m> {
    /// An engine whose KV cache holds `cfg.num_blocks` blocks of
    /// `cfg.block_size` tokens in `dtype`.
    pub fn new(model: &'m DecoderModel, cfg: SchedulerConfig, dtype: KvDType) -> Result<Self> {
        let kv = model.new_paged(cfg.num_blocks, cfg.block_size, dtype)?;
        Ok(Self {
            model,
            kv,
            sched: Scheduler::new(cfg)?,
            live: HashMap::new(),
            device_sampling: true,
        })
    }

    /// Queues a request; errors (nothing queued) for an invalid sampling
    /// setting or a prompt the cache or context can never hold.
    pub fn add(&mut self, req: BatchRequest) -> Result<SeqId> {
        let vocab = self.model.config.vocab_size;
        if let Some(t) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Invalid(format!(
                "prompt token {t} is outside the vocabulary of {vocab}"
            )));
        }
        let sampler = Sampler::new(req.sampling)?;
        let eos = match &req.guide {
            Some(g) if req.eos.is_empty() => g.eos_ids().to_vec(),
            _ => req.eos,
        };
        let id = self
            .sched
            .add(Request::new(req.prompt, req.max_new_tokens))?;
        self.live.insert(
            id,
            Live {
                sampler,
                eos,
                logprobs: req.logprobs,
                guide: req.guide,
            },
        );
        Ok(id)
    }

    /// Whether any request is waiting or running.
    pub fn has_unfinished(&self) -> bool {
        self.sched.has_unfinished()
    }

    /// The scheduler (statistics, sequences).
    pub fn scheduler(&self) -> &Scheduler {
        &self.sched
    }

    /// Ends a sequence now (a stop string seen by the caller); its blocks
    /// are freed. Unknown or finished ids are an error.
    pub fn finish(&mut self, id: SeqId, reason: FinishReason) -> Result<()> {
        self.live.remove(&id);
        self.sched.finish(id, reason).map(|_| ())
    }

    /// Drops a request (its client went away); its blocks are freed.
    pub fn cancel(&mut self, id: SeqId) -> Result<()> {
        self.live.remove(&id);
        self.sched.cancel(id).map(|_| ())
    }

    /// Runs one step; returns the tokens it sampled (none when nothing was
    /// runnable). On a model error the step is dropped and can be retried.
    ///
    /// Sampling: where the backend samples on the device
    /// ([`mm_core::Device::supports_sampling`]), the rows that need no host
    /// logits (no grammar mask, no log-probabilities) are sampled there
    /// and only their ids come back; the other rows, and every row
    /// elsewhere, are read back and sampled on the host, in parallel.
    pub fn step(&mut self) -> Result<Vec<TokenEvent>> {
        let plan = self.sched.schedule()?;
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        let prompt_len = |id| self.sched.get(id).map_or(0, |q| q.prompt_len());
        let step = model_step(&plan, self.kv.block_size(), prompt_len);
        let picked = self
            .model
            .forward_step(&step, &mut self.kv)
            .and_then(|logits| self.sample_step(&plan, &logits));
        let done = match picked {
            Ok(d) => d,
            Err(e) => {
                self.sched.abort_step();
                return Err(e);
            }
        };
        let mut extra = HashMap::with_capacity(done.len());
        for (id, token, lp, cached) in done {
            extra.insert(id, (token, lp, cached));
        }
        let sampled: Vec<(SeqId, Option<u32>)> = plan
            .seqs
            .iter()
            .map(|s| (s.id, extra.get(&s.id).map(|e| e.0)))
            .collect();
        let out = self.sched.on_step_done(&sampled)?;
        let mut events = Vec::new();
        for (id, token) in sampled {
            let Some(token) = token else { continue };
            // A guide that admits nothing more ends the sequence after this
            // token, as EOS does.
            let eos = self.live.get(&id).is_some_and(|l| {
                l.eos.contains(&token) || l.guide.as_ref().is_some_and(|g| g.is_finished())
            });
            let length = out.finished.iter().any(|q| q.id == id);
            let finished = if eos {
                if !length {
                    self.sched.finish(id, FinishReason::Stop)?;
                }
                Some(FinishReason::Stop)
            } else if length {
                Some(FinishReason::Length)
            } else {
                None
            };
            if finished.is_some() {
                self.live.remove(&id);
            }
            let (_, logprobs, cached_tokens) = extra.remove(&id).unwrap_or((token, None, 0));
            events.push(TokenEvent {
                id,
                token,
                finished,
                logprobs,
                cached_tokens,
            });
        }
        Ok(events)
    }
}

/// A sampled token: its sequence, id, log-probabilities (when asked for)
/// and the sequence's cached prompt tokens.
type Picked = (SeqId, u32, Option<TokenLogprobs>, usize);

impl BatchEngine<'_> {
    /// Whether rows that need no host logits are sampled by the backend
    /// when it can (the default); `false` samples every row on the host
    /// (tests compare the two).
    pub fn set_device_sampling(&mut self, on: bool) {
        self.device_sampling = on;
    }

    /// The token of every sequence of `plan` whose logits (`[rows, vocab]`,
    /// in plan order) came back: see [`BatchEngine::step`].
    fn sample_step(&mut self, plan: &StepPlan, logits: &Tensor) -> Result<Vec<Picked>> {
        let (n, vocab) = logits.dims2()?;
        let seqs: Vec<SeqId> = plan
            .seqs
            .iter()
            .filter(|s| s.needs_logits)
            .map(|s| s.id)
            .collect();
        if seqs.len() != n {
            return Err(Error::Other(format!(
                "the step returned {n} logits rows for {} sequences",
                seqs.len()
            )));
        }
        if let Some(id) = seqs.iter().find(|id| !self.live.contains_key(id)) {
            return Err(Error::Other(format!("sequence {id} has no sampler")));
        }
        let dev = self.model.device();
        let on_device = self.device_sampling && dev.supports_sampling();
        let (mut host_rows, mut dev_rows) = (Vec::new(), Vec::new());
        for (row, id) in seqs.iter().enumerate() {
            let l = &self.live[id];
            match on_device && l.guide.is_none() && l.logprobs.is_none() {
                true => dev_rows.push(row),
                false => host_rows.push(row),
            }
        }
        let mut out = Vec::with_capacity(n);
        if !dev_rows.is_empty() {
            let mut params = Vec::with_capacity(dev_rows.len());
            for &row in &dev_rows {
                let history = self.sched.get(seqs[row]).map_or(&[][..], |q| q.tokens());
                if let Some(l) = self.live.get_mut(&seqs[row]) {
                    params.push(l.sampler.row(history, row));
                }
            }
            let ids = dev.sample(logits, &params)?;
            for (&row, token) in dev_rows.iter().zip(ids) {
                let id = seqs[row];
                if let Some(l) = self.live.get_mut(&id) {
                    l.sampler.accept(token);
                }
                let cached = self.sched.get(id).map_or(0, |q| q.cached_tokens);
                out.push((id, token, None, cached));
            }
        }
        if !host_rows.is_empty() {
            // Only the host rows cross the bus; host row k is logits row
            // host_rows[k].
            let host = match host_rows.len() == n {
                true => logits.to_vec()?,
                false => logits.rows_to_vec(&host_rows)?,
            };
            let rows: Vec<(SeqId, usize)> = host_rows
                .iter()
                .enumerate()
                .map(|(k, &row)| (seqs[row], k))
                .collect();
            out.extend(self.sample_host(&rows, &host, vocab)?);
        }
        Ok(out)
    }

    /// Samples `rows` (sequence, row of `host[.., vocab]`) on the host, in
    /// parallel: a sampler's pass over the vocabulary takes tens of
    /// microseconds, and a batch holds up to hundreds of rows.
    fn sample_host(
        &mut self,
        rows: &[(SeqId, usize)],
        host: &[f32],
        vocab: usize,
    ) -> Result<Vec<Picked>> {
        let mut masked = self.grammar_masks(rows, host, vocab);
        let mut work = Vec::new();
        for &(id, k) in rows {
            let Some(live) = self.live.remove(&id) else {
                continue;
            };
            let seq = self.sched.get(id);
            let history = seq.map_or(&[][..], |q| q.tokens());
            let cached = seq.map_or(0, |q| q.cached_tokens);
            work.push((id, k, live, masked.remove(&id), history, cached));
        }
        let done: Vec<_> = work
            .into_par_iter()
            .map(|(id, k, mut live, mask, history, cached)| {
                let lg = &host[k * vocab..(k + 1) * vocab];
                let token = match (&mut live.guide, mask) {
                    (Some(g), Some(m)) => live.sampler.sample(&m, history).inspect(|&t| {
                        if let Err(e) = g.accept(t) {
                            tracing::warn!("sequence {id}: {e}");
                        }
                    }),
                    _ => live.sampler.sample(lg, history),
                };
                let lp = match (&token, live.logprobs) {
                    (Ok(t), Some(k)) => Some(token_logprobs(lg, *t, k)),
                    _ => None,
                };
                (id, live, token, lp, cached)
            })
            .collect();
        let (mut out, mut failed) = (Vec::with_capacity(done.len()), None);
        for (id, live, token, lp, cached) in done {
            self.live.insert(id, live);
            match token {
                Ok(t) => out.push((id, t, lp, cached)),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// The logits of every guided sequence of `rows` (sequence, row of
    /// `host[.., vocab]`) with the tokens its grammar forbids at −∞; the
    /// guides run in parallel (a mask takes about a millisecond).
    fn grammar_masks(
        &mut self,
        rows: &[(SeqId, usize)],
        host: &[f32],
        vocab: usize,
    ) -> HashMap<SeqId, Vec<f32>> {
        let mut work = Vec::new();
        for &(id, k) in rows {
            if let Some(g) = self.live.get_mut(&id).and_then(|l| l.guide.take()) {
                work.push((id, k, g));
            }
        }
        let done: Vec<(SeqId, Guide, Vec<f32>)> = work
            .into_par_iter()
            .map(|(id, k, mut g)| {
                let mut l = host[k * vocab..(k + 1) * vocab].to_vec();
                g.mask(&mut l);
                (id, g, l)
            })
            .collect();
        let mut out = HashMap::with_capacity(done.len());
        for (id, g, l) in done {
            if let Some(live) = self.live.get_mut(&id) {
                live.guide = Some(g);
            }
            out.insert(id, l);
        }
        out
    }
}

/// Log-softmax of `logits` at `token`, and the `k` most likely ids.
fn token_logprobs(logits: &[f32], token: u32, k: usize) -> TokenLogprobs {
    let mx = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = mx + logits.iter().map(|&v| (v - mx).exp()).sum::<f32>().ln();
    let lp = |i: usize| logits.get(i).map_or(f32::NEG_INFINITY, |&v| v - lse);
    let mut top: Vec<u32> = Vec::with_capacity(k + 1);
    if k > 0 {
        // One pass keeping the k best (k is small: OpenAI allows 20).
        for (i, &v) in logits.iter().enumerate() {
            if top.len() == k && v <= logits[top[k - 1] as usize] {
                continue;
            }
            let at = top.partition_point(|&j| logits[j as usize] >= v);
            top.insert(at, i as u32);
            top.truncate(k);
        }
    }
    TokenLogprobs {
        logprob: lp(token as usize),
        top: top.into_iter().map(|i| (i, lp(i as usize))).collect(),
    }
}

/// The model's step for a scheduler plan (block ids and slots as u32);
/// a row is a prompt row when its position is inside its sequence's
/// prompt (`prompt_len(id)`), so a recomputed generated token keeps the
/// arithmetic it was first computed with.
fn model_step(plan: &StepPlan, block_size: usize, prompt_len: impl Fn(SeqId) -> usize) -> Step {
    let f = plan.flatten();
    let mut batch = PagedBatch {
        block_size,
        ..Default::default()
    };
    let mut kinds = Vec::with_capacity(f.input_ids.len());
    for (j, s) in plan.seqs.iter().enumerate() {
        let pl = prompt_len(s.id);
        kinds.extend(s.positions().map(|p| {
            if p < pl {
                RowKind::Prompt
            } else {
                RowKind::Generated
            }
        }));
        batch.seqs.push(SeqSpan {
            q_start: f.query_start[j],
            q_len: s.num_tokens(),
            kv_len: s.context_len(),
            table_start: batch.block_tables.len(),
        });
        batch
            .block_tables
            .extend(s.block_table.iter().map(|&b| b as u32));
    }
    Step {
        ids: f.input_ids,
        positions: f.positions.iter().map(|&p| p as u32).collect(),
        slots: f.slot_mapping.iter().map(|&s| s as u32).collect(),
        batch,
        logits_rows: f.logits_indices,
        kinds,
    }
}

#[cfg(test)]
mod tests {
    use super::token_logprobs;

    #[test]
    fn logprobs_are_log_softmax_with_sorted_top_k() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, -1.0];
        let lp = token_logprobs(&logits, 2, 3);
        let z: f32 = logits.iter().map(|v| v.exp()).sum();
        assert!((lp.logprob - (2.0f32.exp() / z).ln()).abs() < 1e-5);
        let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![1, 3, 2], "ties keep the lower id first");
        assert!((lp.top[0].1 - (3.0f32.exp() / z).ln()).abs() < 1e-5);
        assert!(token_logprobs(&logits, 0, 0).top.is_empty());
    }
}
