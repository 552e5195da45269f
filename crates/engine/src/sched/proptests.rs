//! Property tests: random arrivals (prompts sharing prefixes), chunking,
//! stops, cancellations and tiny caches that force preemption, with the
//! invariants checked after every step and liveness at the end.

use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;

use super::*;

/// What happens around one step.
#[derive(Clone, Debug)]
struct Op {
    /// A new request: (base prompt, its prefix length, own suffix length,
    /// max_new_tokens).
    add: Option<(usize, usize, usize, usize)>,
    /// Cancel the live sequence at this index (modulo the count).
    cancel: Option<usize>,
    /// Stop (EOS) the decoding sequence at this index.
    stop: Option<usize>,
    /// Sampled tokens come from a 3-token vocabulary, so generated text
    /// repeats and fills shareable blocks too.
    tok: u32,
}

fn op() -> impl Strategy<Value = Op> {
    (
        proptest::option::weighted(0.6, (0..3usize, 0..40usize, 0..12usize, 1..12usize)),
        proptest::option::weighted(0.08, any::<usize>()),
        proptest::option::weighted(0.1, any::<usize>()),
        0..3u32,
    )
        .prop_map(|(add, cancel, stop, tok)| Op {
            add,
            cancel,
            stop,
            tok,
        })
}

fn config() -> impl Strategy<Value = SchedulerConfig> {
    (
        1..6usize,
        0..24usize,
        prop::sample::select(vec![1usize, 2, 4, 8]),
        3..40usize,
        8..64usize,
        any::<bool>(),
    )
        .prop_map(|(seqs, extra, bs, blocks, len, caching)| SchedulerConfig {
            max_num_seqs: seqs,
            max_num_batched_tokens: seqs + extra,
            block_size: bs,
            num_blocks: blocks,
            max_model_len: len,
            enable_prefix_caching: caching,
        })
}

const BASES: [u32; 3] = [1000, 2000, 3000];

fn prompt(base: usize, prefix: usize, suffix: usize, salt: u32) -> Vec<u32> {
    let b = BASES[base % 3];
    (0..prefix as u32)
        .map(|i| b + i)
        .chain((0..suffix as u32).map(|i| 10_000 + salt * 100 + i))
        .collect()
}

/// Checks one plan against the scheduler state right after `schedule`.
fn check_plan(
    s: &Scheduler,
    plan: &StepPlan,
    decoding: &BTreeSet<SeqId>,
) -> Result<(), TestCaseError> {
    let cfg = s.config().clone();
    let bs = cfg.block_size;
    let a = s.pool().allocator();
    s.check_invariants()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let total: usize = plan.seqs.iter().map(|e| e.num_tokens()).sum();
    prop_assert_eq!(total, plan.num_batched_tokens);
    prop_assert!(total <= cfg.max_num_batched_tokens, "token budget exceeded");
    prop_assert!(plan.seqs.len() <= cfg.max_num_seqs);
    prop_assert!(s.stats().num_running <= cfg.max_num_seqs);
    // Decodes are never starved: each is scheduled unless preempted.
    for id in decoding {
        let e = plan.seqs.iter().find(|e| e.id == *id);
        prop_assert!(
            e.is_some_and(|e| e.num_tokens() == 1) || plan.preempted.contains(id),
            "decode {} neither scheduled nor preempted",
            id
        );
    }
    let mut written = BTreeSet::new();
    for e in &plan.seqs {
        let seq = s
            .get(e.id)
            .ok_or_else(|| TestCaseError::fail("scheduled sequence unknown"))?;
        prop_assert_eq!(seq.status, SeqStatus::Running);
        prop_assert!(!plan.preempted.contains(&e.id));
        prop_assert!(e.num_tokens() >= 1);
        prop_assert_eq!(e.start, seq.num_computed);
        prop_assert_eq!(&e.token_ids[..], &seq.tokens()[e.start..e.context_len()]);
        prop_assert_eq!(e.needs_logits, e.context_len() == seq.len());
        prop_assert_eq!(&e.block_table, &seq.block_table);
        prop_assert!(e.block_table.len() * bs >= e.context_len());
        for (p, &slot) in e.positions().zip(&e.slot_mapping) {
            let block = (slot / bs) as BlockId;
            prop_assert_eq!(e.block_table[p / bs], block);
            prop_assert_eq!(slot % bs, p % bs);
            // Written blocks belong to this sequence alone and are not cached.
            prop_assert_eq!(a.ref_count(block).unwrap_or(0), 1);
            prop_assert!(!s.pool().is_cached(block));
            prop_assert!(written.insert(slot), "slot {} written twice", slot);
        }
    }
    // Cached blocks: the same prefix always maps to the same block.
    let mut by_prefix: HashMap<&[u32], BlockId> = HashMap::new();
    let mut by_block: HashMap<BlockId, &[u32]> = HashMap::new();
    for id in s.running() {
        let seq = s
            .get(id)
            .ok_or_else(|| TestCaseError::fail("running sequence unknown"))?;
        for (i, &b) in seq.block_table.iter().enumerate() {
            if !s.pool().is_cached(b) {
                continue;
            }
            let prefix = &seq.tokens()[..(i + 1) * bs];
            prop_assert_eq!(*by_prefix.entry(prefix).or_insert(b), b);
            prop_assert_eq!(*by_block.entry(b).or_insert(prefix), prefix);
        }
    }
    Ok(())
}

/// Drives a scheduler through `ops`, then to completion.
fn simulate(cfg: SchedulerConfig, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut s = Scheduler::new(cfg.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let bs = cfg.block_size;
    let mut decoding: BTreeSet<SeqId> = BTreeSet::new();
    let mut requests: HashMap<SeqId, Request> = HashMap::new();
    let mut ended: HashMap<SeqId, Sequence> = HashMap::new();
    let limit = ops.len() + 4000;
    let mut step = 0;
    loop {
        let op = ops.get(step).cloned();
        if op.is_none() && !s.has_unfinished() {
            break;
        }
        prop_assert!(step < limit, "not finished after {} steps", limit);
        if let Some(Op {
            add: Some((base, pre, suf, max_new)),
            ..
        }) = op
        {
            let req = Request::new(prompt(base, pre, suf, step as u32), max_new);
            let len = req.prompt.len();
            let kv = (len + max_new).min(cfg.max_model_len).saturating_sub(1);
            let fits = len > 0 && len < cfg.max_model_len && kv.div_ceil(bs) <= cfg.num_blocks;
            match s.add(req.clone()) {
                Ok(id) => {
                    prop_assert!(fits, "accepted a request that cannot fit");
                    requests.insert(id, req);
                }
                Err(e) => {
                    prop_assert!(!fits, "rejected a request that fits: {}", e);
                    prop_assert!(matches!(e, mm_core::Error::Invalid(_)));
                }
            }
        }
        let running_before = s.stats().num_running;
        // Running sequences before the step, and whether each decodes (one
        // token pending: scheduled in the decode pass).
        let before: Vec<(SeqId, bool)> = s
            .running()
            .map(|id| (id, s.get(id).is_some_and(|q| q.num_pending() == 1)))
            .collect();
        let plan = s
            .schedule()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_plan(&s, &plan, &decoding)?;
        // The newest are preempted first: a newer running sequence survives
        // a preemption only as a decode when the victim is a prefill chunk.
        for &v in &plan.preempted {
            let v_decodes = before.iter().any(|&(id, d)| id == v && d);
            for &(r, r_decodes) in before.iter().filter(|&&(r, _)| r > v) {
                prop_assert!(
                    plan.preempted.contains(&r) || (r_decodes && !v_decodes),
                    "preempted {} but kept newer {}",
                    v,
                    r
                );
            }
        }
        prop_assert!(
            !plan.is_empty() || !plan.preempted.is_empty() || !s.has_unfinished(),
            "nothing scheduled with {} running, {} waiting",
            running_before,
            s.stats().num_waiting
        );
        let tok = op.as_ref().map_or(1, |o| o.tok);
        // A cancel may land between schedule and on_step_done, as a client
        // disconnect does: the step's entry for it is then ignored.
        let live: Vec<SeqId> = s.running().chain(s.waiting()).collect();
        if let Some(k) = op
            .as_ref()
            .and_then(|o| o.cancel)
            .filter(|_| !live.is_empty())
        {
            let id = live[k % live.len()];
            let seq = s
                .cancel(id)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(seq.block_table.is_empty());
            prop_assert!(s.get(id).is_none());
            ended.insert(id, seq);
            s.check_invariants()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        let sampled: Vec<_> = plan
            .seqs
            .iter()
            .map(|e| (e.id, e.needs_logits.then_some(tok)))
            .collect();
        let out = s
            .on_step_done(&sampled)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        for seq in out.finished {
            prop_assert_eq!(seq.status, SeqStatus::Finished(FinishReason::Length));
            ended.insert(seq.id, seq);
        }
        decoding = plan
            .seqs
            .iter()
            .filter(|e| e.needs_logits && s.get(e.id).is_some())
            .map(|e| e.id)
            .collect();
        if let Some(k) = op
            .as_ref()
            .and_then(|o| o.stop)
            .filter(|_| !decoding.is_empty())
        {
            let id = *decoding.iter().nth(k % decoding.len()).unwrap_or(&0);
            let seq = s
                .finish(id, FinishReason::Stop)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            decoding.remove(&id);
            ended.insert(id, seq);
        }
        s.check_invariants()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        step += 1;
    }

    // No leak: every block is free or an evictable cached one.
    let a = s.pool().allocator();
    prop_assert_eq!(a.num_used(), 0);
    prop_assert_eq!(a.num_free() + a.num_retained(), cfg.num_blocks);
    prop_assert_eq!(s.pool().num_evictable(), a.num_retained());
    if !cfg.enable_prefix_caching {
        prop_assert_eq!(a.num_retained(), 0);
    }
    // Every accepted request ended, with its prompt intact and, when it ran
    // to its length, exactly the tokens it was allowed.
    prop_assert_eq!(ended.len(), requests.len());
    for (id, req) in &requests {
        let seq = &ended[id];
        prop_assert_eq!(seq.prompt(), &req.prompt[..]);
        let cap = req.max_new_tokens.min(cfg.max_model_len - req.prompt.len());
        if seq.status == SeqStatus::Finished(FinishReason::Length) {
            prop_assert_eq!(seq.generated().len(), cap);
        } else {
            prop_assert!(seq.generated().len() <= cap);
        }
        prop_assert!(seq.cached_tokens < req.prompt.len().max(1));
        prop_assert_eq!(seq.cached_tokens % bs, 0);
    }
    let st = s.stats().prefix_cache;
    prop_assert!(st.hits <= st.queries && st.preempted_hits <= st.preempted_queries);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn random_workloads_keep_invariants(cfg in config(), ops in prop::collection::vec(op(), 1..80)) {
        simulate(cfg, ops)?;
    }

    /// Tiny caches and long shared prompts: preemption and eviction galore.
    #[test]
    fn tiny_caches_preempt_and_stay_live(
        bs in prop::sample::select(vec![1usize, 2, 4]),
        blocks in 2..10usize,
        seqs in 1..5usize,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let cfg = SchedulerConfig {
            max_num_seqs: seqs,
            max_num_batched_tokens: seqs + 6,
            block_size: bs,
            num_blocks: blocks,
            max_model_len: blocks * bs + 1,
            enable_prefix_caching: true,
        };
        simulate(cfg, ops)?;
    }
}

/// The preemption counter moves in tiny-cache runs (the property test above
/// would pass vacuously if it never did).
#[test]
fn tiny_cache_workload_preempts() {
    let cfg = SchedulerConfig {
        max_num_seqs: 4,
        max_num_batched_tokens: 8,
        block_size: 2,
        num_blocks: 8,
        max_model_len: 17,
        enable_prefix_caching: true,
    };
    let mut s = Scheduler::new(cfg).unwrap();
    for i in 0..6 {
        s.add(Request::new(prompt(i % 2, 5, 2, i as u32), 8))
            .unwrap();
    }
    let mut steps = 0;
    while s.has_unfinished() {
        let plan = s.schedule().unwrap();
        let sampled: Vec<_> = plan
            .seqs
            .iter()
            .map(|e| (e.id, e.needs_logits.then_some(0)))
            .collect();
        s.on_step_done(&sampled).unwrap();
        s.check_invariants().unwrap();
        steps += 1;
        assert!(steps < 1000);
    }
    let st = s.stats();
    assert!(st.num_preemptions > 0);
    assert!(st.prefix_cache.hits > 0);
    assert_eq!(s.pool().allocator().num_used(), 0);
}
