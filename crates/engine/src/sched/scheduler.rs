//! The continuous-batching scheduler (vLLM v1's policy).
//!
//! One step:
//! 1. [`Scheduler::schedule`] picks the work: every running decode gets its
//!    one token first; running prefills get chunks of what is left of the
//!    token budget (`max_num_batched_tokens`), so a long prompt never stalls
//!    the decoding streams; then waiting sequences are admitted in arrival
//!    order (FCFS, preempted ones first), each with its prefix-cache hits and
//!    a first chunk. When a running sequence needs a block and none is left,
//!    the most recently arrived running sequence is **preempted by
//!    recompute**: its blocks are freed and it waits again, keeping its
//!    generated tokens (its full computed blocks stay in the prefix cache,
//!    so the recompute is often a cache hit).
//! 2. The caller runs the model on the [`StepPlan`] (ids, positions, block
//!    tables, slot mapping) and samples a token for each sequence whose
//!    `needs_logits` is set.
//! 3. [`Scheduler::on_step_done`] records the computed KV and the sampled
//!    tokens, caches the blocks that became full, and finishes sequences
//!    that reached `max_new_tokens` or `max_model_len`. The caller finishes
//!    on EOS / stop strings with [`Scheduler::finish`] and cancels with
//!    [`Scheduler::cancel`], which frees the blocks at once: a freed block
//!    is reused no earlier than the next `schedule`.

use std::collections::{BTreeSet, HashMap};

use mm_core::{Error, Result};

use super::blocks::blocks_for;
use super::config::{SchedulerConfig, SchedulerStats};
use super::prefix::BlockPool;
use super::seq::{FinishReason, Request, SeqId, SeqStatus, Sequence};
use super::step::{ScheduledSeq, StepOutput, StepPlan};

mod invariants;

/// One scheduled entry of the step in flight: (sequence, tokens, sampled).
type InFlight = Vec<(SeqId, usize, bool)>;

/// Continuous batching over a paged, prefix-cached KV cache.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    pool: BlockPool,
    seqs: HashMap<SeqId, Sequence>,
    /// Both ordered by id, i.e. by arrival.
    running: BTreeSet<SeqId>,
    waiting: BTreeSet<SeqId>,
    next_id: SeqId,
    in_flight: Option<InFlight>,
    num_preemptions: u64,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Result<Self> {
        cfg.validate()?;
        let pool = BlockPool::new(cfg.num_blocks, cfg.block_size, cfg.enable_prefix_caching)?;
        Ok(Self {
            cfg,
            pool,
            seqs: HashMap::new(),
            running: BTreeSet::new(),
            waiting: BTreeSet::new(),
            next_id: 0,
            in_flight: None,
            num_preemptions: 0,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// The block pool (allocator and prefix cache), read-only.
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Queues a request. Errors (nothing queued) for an empty prompt,
    /// `max_new_tokens` of 0, a prompt that leaves no room in
    /// `max_model_len` for a generated token, or a sequence whose KV could
    /// not fit the cache even alone (it could never finish).
    pub fn add(&mut self, req: Request) -> Result<SeqId> {
        let len = req.prompt.len();
        let (bs, max_len) = (self.cfg.block_size, self.cfg.max_model_len);
        if len == 0 {
            return Err(Error::Invalid("the prompt is empty".into()));
        }
        if req.max_new_tokens == 0 {
            return Err(Error::Invalid("max_new_tokens must be at least 1".into()));
        }
        if len >= max_len {
            return Err(Error::Invalid(format!(
                "the prompt has {len} tokens, but max_model_len is {max_len}: no room for a generated token"
            )));
        }
        // The last generated token is never fed back, so its KV is not needed.
        let kv_tokens = len.saturating_add(req.max_new_tokens).min(max_len) - 1;
        let blocks = blocks_for(kv_tokens, bs);
        if blocks > self.cfg.num_blocks {
            return Err(Error::Invalid(format!(
                "the request needs up to {kv_tokens} tokens of KV cache ({blocks} blocks of {bs}), more than the whole cache ({} blocks); lower max_tokens or enlarge the cache",
                self.cfg.num_blocks
            )));
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut seq = Sequence::new(id, req);
        if self.cfg.enable_prefix_caching {
            seq.update_hashes(bs);
        }
        self.seqs.insert(id, seq);
        self.waiting.insert(id);
        Ok(id)
    }

    /// A live (not finished) sequence.
    pub fn get(&self, id: SeqId) -> Option<&Sequence> {
        self.seqs.get(&id)
    }

    /// Running sequence ids, in arrival order.
    pub fn running(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.running.iter().copied()
    }

    /// Waiting (and preempted) sequence ids, in the order they will be
    /// admitted.
    pub fn waiting(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.waiting.iter().copied()
    }

    /// Whether any sequence is still waiting or running.
    pub fn has_unfinished(&self) -> bool {
        !self.seqs.is_empty()
    }

    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            num_running: self.running.len(),
            num_waiting: self.waiting.len(),
            kv_cache_usage: self.pool.usage(),
            num_preemptions: self.num_preemptions,
            prefix_cache: self.pool.stats(),
        }
    }

    /// Plans the next step (see the module doc). Errors if the previous
    /// step was neither reported (`on_step_done`) nor dropped (`abort_step`).
    /// An empty plan means there is nothing to run now.
    pub fn schedule(&mut self) -> Result<StepPlan> {
        if self.in_flight.is_some() {
            return Err(Error::Invalid(
                "schedule() called before the previous step was reported with on_step_done() or dropped with abort_step()".into(),
            ));
        }
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut plan = StepPlan::default();
        let mut done: BTreeSet<SeqId> = BTreeSet::new();
        let order: Vec<SeqId> = self.running.iter().copied().collect();

        // 1. Decodes, oldest first. A victim is the newest running sequence
        // not scheduled yet, which is never older than the current one.
        for &id in &order {
            if budget == 0 {
                break;
            }
            if !self.running.contains(&id) || self.seq(id)?.num_pending() != 1 {
                continue;
            }
            loop {
                if self.try_grow(id, 1)? {
                    self.push_entry(&mut plan, &mut done, id, 1)?;
                    budget -= 1;
                    break;
                }
                let victim = self.newest_unscheduled(&done, 0).unwrap_or(id);
                self.preempt(victim)?;
                plan.preempted.push(victim);
                if victim == id {
                    break;
                }
            }
        }

        // 2. Running prefills (chunks), oldest first; they may preempt only
        // newer prefills, never a decode already in the plan, and shrink
        // their chunk to the blocks left.
        for &id in &order {
            if budget == 0 {
                break;
            }
            if !self.running.contains(&id) || done.contains(&id) {
                continue;
            }
            let mut n = self.seq(id)?.num_pending().min(budget);
            loop {
                if self.try_grow(id, n)? {
                    break;
                }
                if let Some(victim) = self.newest_unscheduled(&done, id + 1) {
                    self.preempt(victim)?;
                    plan.preempted.push(victim);
                    continue;
                }
                n = n.min(self.room(id)?);
                break;
            }
            if n > 0 && self.try_grow(id, n)? {
                self.push_entry(&mut plan, &mut done, id, n)?;
                budget -= n;
            }
        }

        // 3. Waiting sequences, FCFS, none if this step preempted (vLLM):
        // admitting now would only take blocks a running sequence needs.
        while budget > 0 && self.running.len() < self.cfg.max_num_seqs && plan.preempted.is_empty()
        {
            let Some(&id) = self.waiting.first() else {
                break;
            };
            let Some(n) = self.admit(id, budget)? else {
                break;
            };
            self.push_entry(&mut plan, &mut done, id, n)?;
            budget -= n;
        }

        plan.num_batched_tokens = self.cfg.max_num_batched_tokens - budget;
        self.in_flight = Some(
            plan.seqs
                .iter()
                .map(|s| (s.id, s.token_ids.len(), s.needs_logits))
                .collect(),
        );
        Ok(plan)
    }

    /// Records the step planned by the last `schedule`: every scheduled
    /// chunk is computed, and `sampled` gives the token sampled for each
    /// sequence whose `needs_logits` was set (`None` or no entry for the
    /// others). Entries of sequences finished or cancelled since are
    /// ignored. On error (a missing or unexpected token) nothing changes and
    /// the call can be repeated with corrected input.
    pub fn on_step_done(&mut self, sampled: &[(SeqId, Option<u32>)]) -> Result<StepOutput> {
        let Some(flight) = self.in_flight.as_ref() else {
            return Err(Error::Invalid(
                "on_step_done() without a scheduled step".into(),
            ));
        };
        let mut tokens: HashMap<SeqId, u32> = HashMap::new();
        let mut seen: BTreeSet<SeqId> = BTreeSet::new();
        for &(id, tok) in sampled {
            if !seen.insert(id) {
                return Err(Error::Invalid(format!(
                    "sequence {id} reported twice in one step"
                )));
            }
            if !self.seqs.contains_key(&id) {
                continue;
            }
            let Some(&(_, _, logits)) = flight.iter().find(|e| e.0 == id) else {
                return Err(Error::Invalid(format!(
                    "sequence {id} was not scheduled in this step"
                )));
            };
            match (logits, tok) {
                (true, Some(t)) => {
                    tokens.insert(id, t);
                }
                (false, Some(_)) => {
                    return Err(Error::Invalid(format!(
                        "sequence {id} got a sampled token, but this step only computed part of its prompt"
                    )))
                }
                (_, None) => {}
            }
        }
        for &(id, _, logits) in flight {
            if logits && self.seqs.contains_key(&id) && !tokens.contains_key(&id) {
                return Err(Error::Invalid(format!(
                    "sequence {id} needs a sampled token for this step"
                )));
            }
        }

        let flight = self.in_flight.take().unwrap_or_default();
        let (bs, caching) = (self.cfg.block_size, self.cfg.enable_prefix_caching);
        let mut out = StepOutput::default();
        for (id, n, _) in flight {
            let Some(seq) = self.seqs.get_mut(&id) else {
                continue;
            };
            seq.num_computed += n;
            if let Some(&t) = tokens.get(&id) {
                seq.push_token(t, bs, caching);
            }
            if caching {
                let full = seq.num_computed / bs;
                while seq.num_cached_blocks < full {
                    let i = seq.num_cached_blocks;
                    let (Some(&h), Some(&b)) = (seq.block_hashes.get(i), seq.block_table.get(i))
                    else {
                        break;
                    };
                    let parent = i.checked_sub(1).map(|p| seq.block_hashes[p]);
                    self.pool
                        .register(b, h, parent, &seq.tokens()[i * bs..(i + 1) * bs])?;
                    seq.num_cached_blocks += 1;
                }
            }
            if seq.generated().len() >= seq.max_new_tokens || seq.len() >= self.cfg.max_model_len {
                out.finished.push(self.finish(id, FinishReason::Length)?);
            }
        }
        Ok(out)
    }

    /// Drops the step in flight (the model failed to run it): nothing is
    /// recorded, the same tokens are planned again. Blocks stay allocated.
    pub fn abort_step(&mut self) {
        self.in_flight = None;
    }

    /// Ends a sequence and frees its blocks now (cached ones become
    /// evictable). Returns it with its tokens; it is then forgotten. Errors
    /// for an unknown or already finished id.
    pub fn finish(&mut self, id: SeqId, reason: FinishReason) -> Result<Sequence> {
        let Some(mut seq) = self.seqs.remove(&id) else {
            return Err(Error::Invalid(format!(
                "unknown sequence {id} (never added, or already finished or cancelled)"
            )));
        };
        self.running.remove(&id);
        self.waiting.remove(&id);
        let freed = self.release_blocks(&mut seq);
        seq.status = SeqStatus::Finished(reason);
        freed.map(|_| seq)
    }

    /// Cancels a sequence: `finish` with [`FinishReason::Abort`].
    pub fn cancel(&mut self, id: SeqId) -> Result<Sequence> {
        self.finish(id, FinishReason::Abort)
    }

    fn seq(&self, id: SeqId) -> Result<&Sequence> {
        self.seqs
            .get(&id)
            .ok_or_else(|| Error::Invalid(format!("scheduler lost track of sequence {id}")))
    }

    /// Frees the table in reverse, so a sequence's tail blocks are evicted
    /// before its (more widely shared) head. Tries every block; returns the
    /// first error.
    fn release_blocks(&mut self, seq: &mut Sequence) -> Result<()> {
        let mut first_err = Ok(());
        for b in seq.block_table.drain(..).rev() {
            if let Err(e) = self.pool.release(b) {
                if first_err.is_ok() {
                    first_err = Err(e);
                }
            }
        }
        seq.num_cached_blocks = 0;
        first_err
    }

    /// Allocates the blocks for `n` more computed tokens of `id`, all or
    /// none. False when there are not enough.
    fn try_grow(&mut self, id: SeqId, n: usize) -> Result<bool> {
        let bs = self.cfg.block_size;
        let seq = self.seq(id)?;
        let need = blocks_for(seq.num_computed + n, bs).saturating_sub(seq.block_table.len());
        if need > self.pool.num_available() {
            return Ok(false);
        }
        let mut new = Vec::with_capacity(need);
        for _ in 0..need {
            let b = self.pool.allocate().ok_or_else(|| {
                Error::Invalid("KV block pool ran out below its available count".into())
            })?;
            new.push(b);
        }
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.block_table.extend(new);
        }
        Ok(true)
    }

    /// How many more tokens `id` could compute with its own slack and the
    /// blocks still available.
    fn room(&self, id: SeqId) -> Result<usize> {
        let seq = self.seq(id)?;
        let bs = self.cfg.block_size;
        let held = (seq.block_table.len() * bs).saturating_sub(seq.num_computed);
        Ok(held + self.pool.num_available() * bs)
    }

    /// The newest running sequence with id ≥ `min_id` not in this plan.
    fn newest_unscheduled(&self, done: &BTreeSet<SeqId>, min_id: SeqId) -> Option<SeqId> {
        self.running
            .range(min_id..)
            .rev()
            .find(|id| !done.contains(id))
            .copied()
    }

    /// Preemption by recompute: frees the blocks, back to waiting (admitted
    /// before the newer waiting ones, as ids order the queue).
    fn preempt(&mut self, id: SeqId) -> Result<()> {
        let Some(mut seq) = self.seqs.remove(&id) else {
            return Err(Error::Invalid(format!(
                "cannot preempt unknown sequence {id}"
            )));
        };
        let freed = self.release_blocks(&mut seq);
        seq.num_computed = 0;
        seq.status = SeqStatus::Preempted;
        seq.num_preemptions += 1;
        self.num_preemptions += 1;
        self.running.remove(&id);
        self.waiting.insert(id);
        self.seqs.insert(id, seq);
        freed
    }

    /// Tries to admit waiting `id` with at most `budget` tokens: takes its
    /// prefix-cache hits and the blocks of its first chunk. Returns the
    /// chunk length, or `None` (nothing changed) if the blocks are lacking.
    fn admit(&mut self, id: SeqId, budget: usize) -> Result<Option<usize>> {
        let bs = self.cfg.block_size;
        let seq = self.seq(id)?;
        let len = seq.len();
        // At least the last token is computed, so its logits exist: only
        // blocks wholly before it can be hits (and they are never written).
        let hits = if self.pool.caching_enabled() {
            let max_hits = ((len - 1) / bs).min(seq.block_hashes.len());
            self.pool
                .lookup(&seq.block_hashes[..max_hits], seq.tokens())
        } else {
            Vec::new()
        };
        let cached = hits.len() * bs;
        let n = (len - cached).min(budget);
        let need = blocks_for(cached + n, bs) - hits.len();
        let evictable_hits = hits.iter().filter(|&&b| self.pool.is_evictable(b)).count();
        if need + evictable_hits > self.pool.num_available() {
            return Ok(None);
        }
        for &b in &hits {
            self.pool.acquire(b)?;
        }
        let mut table = hits;
        for _ in 0..need {
            let b = self.pool.allocate().ok_or_else(|| {
                Error::Invalid("KV block pool ran out below its available count".into())
            })?;
            table.push(b);
        }
        let recompute = self.seq(id)?.admitted_before;
        self.pool.record_lookup(len, cached, recompute);
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.num_cached_blocks = cached / bs;
            seq.block_table = table;
            seq.num_computed = cached;
            seq.status = SeqStatus::Running;
            if !seq.admitted_before {
                seq.cached_tokens = cached;
                seq.admitted_before = true;
            }
        }
        self.waiting.remove(&id);
        self.running.insert(id);
        Ok(Some(n))
    }

    fn push_entry(
        &self,
        plan: &mut StepPlan,
        done: &mut BTreeSet<SeqId>,
        id: SeqId,
        n: usize,
    ) -> Result<()> {
        let seq = self.seq(id)?;
        let bs = self.cfg.block_size;
        let start = seq.num_computed;
        let slot_mapping = (start..start + n)
            .map(|p| {
                seq.slot(p, bs).ok_or_else(|| {
                    Error::Invalid(format!("sequence {id}: no KV block for position {p}"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        plan.seqs.push(ScheduledSeq {
            id,
            token_ids: seq.tokens()[start..start + n].to_vec(),
            start,
            block_table: seq.block_table.clone(),
            slot_mapping,
            needs_logits: start + n == seq.len(),
        });
        done.insert(id);
        Ok(())
    }
}
