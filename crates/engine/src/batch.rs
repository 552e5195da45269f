//! The batched execution loop: many requests, one forward step at a time.
//!
//! Each [`BatchEngine::step`] asks the [`Scheduler`] for a plan (decodes
//! first, then prefill chunks within the token budget; continuous batching:
//! requests join and leave at every step), flattens it into one
//! [`mm_models::Step`] (ids, positions, KV slots, block tables), runs
//! [`DecoderModel::forward_step`] over the shared [`PagedKv`] and samples
//! the next token of every sequence whose prompt is complete with that
//! request's own [`Sampler`] (its parameters and seed). Only the sampled ids
//! leave the step; the KV cache stays where the backend keeps it.
//!
//! End of a sequence: its token budget (the scheduler finishes it), an EOS
//! token, or the caller ([`BatchEngine::finish`] for stop strings,
//! [`BatchEngine::cancel`] for a client that went away); either way its
//! blocks are freed at once.

use std::collections::HashMap;

use rayon::prelude::*;

use mm_core::{Error, KvDType, PagedBatch, Result, RowKind, SeqSpan};
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
    pub fn step(&mut self) -> Result<Vec<TokenEvent>> {
        let plan = self.sched.schedule()?;
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        let prompt_len = |id| self.sched.get(id).map_or(0, |q| q.prompt_len());
        let step = model_step(&plan, self.kv.block_size(), prompt_len);
        let logits = match self.model.forward_step(&step, &mut self.kv) {
            Ok(l) => l.to_vec(),
            Err(e) => Err(e),
        };
        let logits = match logits {
            Ok(l) => l,
            Err(e) => {
                self.sched.abort_step();
                return Err(e);
            }
        };
        let vocab = logits.len() / step.logits_rows.len().max(1);
        let mut masked = self.grammar_masks(&plan, &logits, vocab);
        // Every sequence samples from its row, in parallel: a sampler's
        // pass over the vocabulary takes tens of microseconds, and a batch
        // holds up to hundreds of rows.
        if let Some(s) = plan
            .seqs
            .iter()
            .find(|s| s.needs_logits && !self.live.contains_key(&s.id))
        {
            return Err(Error::Other(format!("sequence {} has no sampler", s.id)));
        }
        let mut work = Vec::new();
        for (row, s) in plan.seqs.iter().filter(|s| s.needs_logits).enumerate() {
            let Some(live) = self.live.remove(&s.id) else {
                continue;
            };
            let seq = self.sched.get(s.id);
            let history = seq.map_or(&[][..], |q| q.tokens());
            let cached = seq.map_or(0, |q| q.cached_tokens);
            work.push((s.id, row, live, masked.remove(&s.id), history, cached));
        }
        let done: Vec<_> = work
            .into_par_iter()
            .map(|(id, row, mut live, mask, history, cached)| {
                let lg = &logits[row * vocab..(row + 1) * vocab];
                let token = match (&mut live.guide, mask) {
                    (Some(g), Some(m)) => {
                        let t = live.sampler.sample(&m, history);
                        if let Err(e) = g.accept(t) {
                            tracing::warn!("sequence {id}: {e}");
                        }
                        t
                    }
                    _ => live.sampler.sample(lg, history),
                };
                let lp = live.logprobs.map(|k| token_logprobs(lg, token, k));
                (id, live, token, lp, cached)
            })
            .collect();
        let mut extra = HashMap::with_capacity(done.len());
        for (id, live, token, lp, cached) in done {
            self.live.insert(id, live);
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

impl BatchEngine<'_> {
    /// The logits of every guided sequence of `plan` with the tokens its
    /// grammar forbids at −∞; the guides run in parallel (a mask takes
    /// about a millisecond).
    fn grammar_masks(
        &mut self,
        plan: &StepPlan,
        logits: &[f32],
        vocab: usize,
    ) -> HashMap<SeqId, Vec<f32>> {
        let mut work = Vec::new();
        for (row, s) in plan.seqs.iter().filter(|s| s.needs_logits).enumerate() {
            if let Some(g) = self.live.get_mut(&s.id).and_then(|l| l.guide.take()) {
                work.push((s.id, row, g));
            }
        }
        let done: Vec<(SeqId, Guide, Vec<f32>)> = work
            .into_par_iter()
            .map(|(id, row, mut g)| {
                let mut l = logits[row * vocab..(row + 1) * vocab].to_vec();
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
