//! Scenario tests of the scheduler: each checks one rule of the policy.

use super::*;

fn cfg(
    num_blocks: usize,
    block_size: usize,
    max_num_seqs: usize,
    budget: usize,
) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs,
        max_num_batched_tokens: budget,
        block_size,
        num_blocks,
        max_model_len: 1024,
        enable_prefix_caching: true,
    }
}

/// Reports the plan with token `tok` for every sequence that samples.
fn done(s: &mut Scheduler, plan: &StepPlan, tok: u32) -> StepOutput {
    let sampled: Vec<_> = plan
        .seqs
        .iter()
        .map(|e| (e.id, e.needs_logits.then_some(tok)))
        .collect();
    let out = s.on_step_done(&sampled).unwrap();
    s.check_invariants().unwrap();
    out
}

fn step(s: &mut Scheduler, tok: u32) -> (StepPlan, StepOutput) {
    let plan = s.schedule().unwrap();
    s.check_invariants().unwrap();
    let out = done(s, &plan, tok);
    (plan, out)
}

fn entry(plan: &StepPlan, id: SeqId) -> Option<&ScheduledSeq> {
    plan.seqs.iter().find(|e| e.id == id)
}

fn msg<T: std::fmt::Debug>(r: Result<T, mm_core::Error>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn config_and_request_validation() {
    assert!(msg(Scheduler::new(cfg(8, 4, 0, 8))).contains("max_num_seqs"));
    assert!(msg(Scheduler::new(cfg(8, 4, 4, 3))).contains("at least max_num_seqs"));
    assert!(Scheduler::new(cfg(0, 4, 1, 8)).is_err());
    assert!(Scheduler::new(cfg(8, 0, 1, 8)).is_err());
    assert!(Scheduler::new(SchedulerConfig {
        max_model_len: 1,
        ..cfg(8, 4, 1, 8)
    })
    .is_err());
    let mut s = Scheduler::new(SchedulerConfig {
        max_model_len: 10,
        ..cfg(2, 4, 1, 8)
    })
    .unwrap();
    assert!(msg(s.add(Request::new(vec![], 1))).contains("empty"));
    assert!(msg(s.add(Request::new(vec![1], 0))).contains("max_new_tokens"));
    assert!(msg(s.add(Request::new(vec![1; 10], 1))).contains("max_model_len is 10"));
    // 8 KV tokens fit 2 blocks of 4: prompt 5 + 4 new needs KV for 8.
    assert!(s.add(Request::new(vec![1; 5], 4)).is_ok());
    assert!(msg(s.add(Request::new(vec![1; 5], 5))).contains("more than the whole cache"));
    assert_eq!(s.stats().num_waiting, 1);
    // max_model_len caps the need: 9 tokens at most, KV for 8.
    let mut s = Scheduler::new(SchedulerConfig {
        max_model_len: 9,
        ..cfg(2, 4, 1, 8)
    })
    .unwrap();
    assert!(s.add(Request::new(vec![1; 5], 1000)).is_ok());
}

#[test]
fn prefill_then_decode_until_length() {
    let mut s = Scheduler::new(cfg(8, 4, 4, 64)).unwrap();
    let id = s.add(Request::new(vec![10, 11, 12, 13, 14], 3)).unwrap();
    let (plan, out) = step(&mut s, 7);
    let e = entry(&plan, id).unwrap();
    assert_eq!(
        (e.start, e.token_ids.clone(), e.needs_logits),
        (0, vec![10, 11, 12, 13, 14], true)
    );
    assert_eq!(e.block_table, vec![0, 1]);
    assert_eq!(e.slot_mapping, vec![0, 1, 2, 3, 4]);
    assert!(out.finished.is_empty());
    assert_eq!(s.get(id).unwrap().generated(), &[7]);
    let (plan, _) = step(&mut s, 8);
    let e = entry(&plan, id).unwrap();
    assert_eq!(
        (e.start, e.token_ids.clone(), e.slot_mapping.clone()),
        (5, vec![7], vec![5])
    );
    let (_, out) = step(&mut s, 9);
    assert_eq!(out.finished.len(), 1);
    let seq = &out.finished[0];
    assert_eq!(seq.generated(), &[7, 8, 9]);
    assert_eq!(seq.status, SeqStatus::Finished(FinishReason::Length));
    assert!(!s.has_unfinished());
    assert_eq!(s.pool().allocator().num_used(), 0);
    assert!(s.schedule().unwrap().is_empty());
}

#[test]
fn max_model_len_ends_the_sequence() {
    let mut s = Scheduler::new(SchedulerConfig {
        max_model_len: 6,
        ..cfg(8, 4, 4, 64)
    })
    .unwrap();
    s.add(Request::new(vec![1, 2, 3, 4], 100)).unwrap();
    step(&mut s, 5);
    let (_, out) = step(&mut s, 6);
    assert_eq!(out.finished[0].len(), 6);
    assert_eq!(
        out.finished[0].status,
        SeqStatus::Finished(FinishReason::Length)
    );
}

#[test]
fn long_prompt_is_chunked_and_decodes_go_first() {
    let mut s = Scheduler::new(cfg(64, 4, 4, 8)).unwrap();
    let a = s.add(Request::new(vec![1, 2, 3], 50)).unwrap();
    step(&mut s, 0);
    let b = s.add(Request::new((0..30).collect(), 5)).unwrap();
    let mut computed = 0;
    while computed < 30 {
        let (plan, _) = step(&mut s, 0);
        assert_eq!(plan.seqs[0].id, a, "the decode comes first");
        assert_eq!(plan.seqs[0].token_ids.len(), 1);
        let e = entry(&plan, b).unwrap();
        assert_eq!(e.start, computed);
        assert_eq!(e.token_ids.len(), 7.min(30 - computed));
        assert_eq!(e.needs_logits, computed + e.token_ids.len() == 30);
        assert!(plan.num_batched_tokens <= 8);
        computed += e.token_ids.len();
    }
    assert_eq!(s.get(b).unwrap().generated().len(), 1);
}

#[test]
fn fcfs_and_max_num_seqs() {
    let mut s = Scheduler::new(cfg(64, 4, 2, 64)).unwrap();
    let ids: Vec<_> = (0..3)
        .map(|i| s.add(Request::new(vec![i; 3], 2)).unwrap())
        .collect();
    let (plan, _) = step(&mut s, 0);
    assert_eq!(plan.seqs.iter().map(|e| e.id).collect::<Vec<_>>(), ids[..2]);
    assert_eq!(s.waiting().collect::<Vec<_>>(), vec![ids[2]]);
    let (_, out) = step(&mut s, 0);
    assert_eq!(out.finished.len(), 2);
    let (plan, _) = step(&mut s, 0);
    assert_eq!(plan.seqs[0].id, ids[2]);
}

#[test]
fn preempts_the_newest_by_recompute() {
    // 4 blocks of 2 tokens; two sequences of 3-token prompts grow until the
    // cache is full, then the newer one is preempted.
    let mut s = Scheduler::new(cfg(4, 2, 4, 16)).unwrap();
    let a = s.add(Request::new(vec![1, 2, 3], 4)).unwrap();
    let b = s.add(Request::new(vec![4, 5, 6], 4)).unwrap();
    step(&mut s, 9); // both prefilled, 2 blocks each, 4 tokens each
    let (plan, _) = step(&mut s, 9); // position 3 fits, 5 tokens each
    assert!(plan.preempted.is_empty());
    let (plan, _) = step(&mut s, 9); // position 4 needs a third block each
    assert_eq!(plan.preempted, vec![b]);
    assert_eq!(plan.seqs.len(), 1);
    assert_eq!(s.stats().num_preemptions, 1);
    let sb = s.get(b).unwrap();
    assert_eq!(sb.status, SeqStatus::Preempted);
    assert_eq!(
        (sb.num_computed, sb.block_table.len(), sb.generated()),
        (0, 0, &[9, 9][..])
    );
    assert_eq!(sb.num_preemptions, 1);
    // a finishes (4 new tokens) then b is recomputed: prompt + generated.
    let (_, out) = step(&mut s, 9);
    assert_eq!(out.finished[0].id, a);
    let (plan, _) = step(&mut s, 9);
    let e = entry(&plan, b).unwrap();
    assert_eq!(e.start + e.token_ids.len(), 5);
    assert_eq!(&s.get(b).unwrap().generated()[..2], &[9, 9]);
    while s.has_unfinished() {
        step(&mut s, 9);
    }
    assert_eq!(s.pool().allocator().num_used(), 0);
}

#[test]
fn prefix_cache_shares_full_blocks() {
    let mut s = Scheduler::new(cfg(16, 4, 4, 64)).unwrap();
    let prompt: Vec<u32> = (0..10).collect();
    let a = s.add(Request::new(prompt.clone(), 5)).unwrap();
    step(&mut s, 50);
    let a_table = s.get(a).unwrap().block_table.clone();
    // Same 10 tokens then more: blocks 0 and 1 (8 tokens) are hits.
    let mut p2 = prompt.clone();
    p2.extend([77, 78, 79]);
    let b = s.add(Request::new(p2, 2)).unwrap();
    let (plan, _) = step(&mut s, 50);
    let e = entry(&plan, b).unwrap();
    assert_eq!(e.start, 8);
    assert_eq!(e.block_table[..2], a_table[..2]);
    assert_ne!(e.block_table[2], a_table[2]);
    assert_eq!(s.get(b).unwrap().cached_tokens, 8);
    assert_eq!(s.pool().allocator().ref_count(a_table[0]).unwrap(), 2);
    assert!(e
        .slot_mapping
        .iter()
        .all(|&x| x / 4 != a_table[0] as usize && x / 4 != a_table[1] as usize));
    let st = s.stats().prefix_cache;
    assert_eq!((st.queries, st.hits), (10 + 13, 8));
    // A prompt that is exactly cached still computes its last block.
    let c = s.add(Request::new(prompt[..8].to_vec(), 1)).unwrap();
    let (plan, out) = step(&mut s, 50);
    let e = entry(&plan, c).unwrap();
    assert_eq!((e.start, e.token_ids.len(), e.needs_logits), (4, 4, true));
    assert_eq!(
        out.finished
            .iter()
            .find(|x| x.id == c)
            .unwrap()
            .cached_tokens,
        4
    );
}

#[test]
fn finished_prefix_stays_cached_until_evicted() {
    let mut s = Scheduler::new(cfg(4, 4, 4, 64)).unwrap();
    let prompt: Vec<u32> = (0..9).collect();
    s.add(Request::new(prompt.clone(), 1)).unwrap();
    let (_, out) = step(&mut s, 1);
    assert_eq!(out.finished.len(), 1);
    assert_eq!(s.pool().allocator().num_used(), 0);
    assert_eq!(s.pool().num_evictable(), 2, "two full blocks stay cached");
    let b = s.add(Request::new(prompt.clone(), 1)).unwrap();
    let (plan, _) = step(&mut s, 1);
    assert_eq!(entry(&plan, b).unwrap().start, 8);
    // A different long prompt needs every block: the cache is evicted.
    let c = s.add(Request::new((100..115).collect(), 1)).unwrap();
    let (plan, _) = step(&mut s, 1);
    assert_eq!(entry(&plan, c).unwrap().start, 0);
    assert_eq!(s.stats().prefix_cache.evictions, 2);
}

#[test]
fn disabled_prefix_cache_never_hits() {
    let mut s = Scheduler::new(SchedulerConfig {
        enable_prefix_caching: false,
        ..cfg(16, 4, 4, 64)
    })
    .unwrap();
    s.add(Request::new((0..9).collect(), 1)).unwrap();
    step(&mut s, 1);
    let b = s.add(Request::new((0..9).collect(), 1)).unwrap();
    let (plan, _) = step(&mut s, 1);
    assert_eq!(entry(&plan, b).unwrap().start, 0);
    assert_eq!(s.stats().prefix_cache, PrefixCacheStats::default());
    assert_eq!(s.pool().allocator().num_free(), 16);
}

#[test]
fn cancel_frees_blocks_at_once_even_mid_step() {
    let mut s = Scheduler::new(cfg(8, 4, 4, 64)).unwrap();
    let a = s.add(Request::new(vec![1; 6], 10)).unwrap();
    let b = s.add(Request::new(vec![2; 6], 10)).unwrap();
    step(&mut s, 3);
    let plan = s.schedule().unwrap();
    let seq = s.cancel(a).unwrap();
    assert_eq!(seq.status, SeqStatus::Finished(FinishReason::Abort));
    assert_eq!(s.pool().allocator().num_used(), 2, "only b's blocks remain");
    // Its sampled token is ignored; b advances.
    done(&mut s, &plan, 4);
    assert_eq!(s.get(b).unwrap().generated(), &[3, 4]);
    assert!(msg(s.cancel(a)).contains("unknown sequence"));
    assert!(s.finish(b, FinishReason::Stop).is_ok());
    assert_eq!(s.pool().allocator().num_used(), 0);
    // A waiting sequence can be cancelled too.
    let c = s.add(Request::new(vec![1], 1)).unwrap();
    s.cancel(c).unwrap();
    assert!(!s.has_unfinished());
}

#[test]
fn step_protocol_errors_change_nothing() {
    let mut s = Scheduler::new(cfg(8, 4, 4, 4)).unwrap();
    assert!(msg(s.on_step_done(&[])).contains("without a scheduled step"));
    let a = s.add(Request::new(vec![1; 6], 3)).unwrap();
    let b = s.add(Request::new(vec![2; 2], 3)).unwrap();
    let plan = s.schedule().unwrap();
    assert!(
        entry(&plan, a).is_some_and(|e| !e.needs_logits),
        "budget 4: a is chunked"
    );
    assert!(entry(&plan, b).is_none());
    assert!(msg(s.schedule()).contains("before the previous step"));
    assert!(msg(s.on_step_done(&[(a, Some(1))])).contains("only computed part"));
    assert!(msg(s.on_step_done(&[(b, None)])).contains("not scheduled"));
    assert!(msg(s.on_step_done(&[(a, None), (a, None)])).contains("twice"));
    assert_eq!(s.get(a).unwrap().num_computed, 0);
    // Dropping the step plans the same work again.
    s.abort_step();
    let again = s.schedule().unwrap();
    assert_eq!(again, plan);
    s.on_step_done(&[]).unwrap();
    let plan = s.schedule().unwrap();
    let e = entry(&plan, a).unwrap();
    assert!(e.needs_logits);
    assert!(msg(s.on_step_done(&[])).contains("needs a sampled token"));
    // Unknown ids (e.g. already cancelled) are ignored.
    s.on_step_done(&[(a, Some(5)), (b, Some(6)), (999, Some(1))])
        .unwrap();
    assert_eq!(s.get(a).unwrap().generated(), &[5]);
    s.check_invariants().unwrap();
}

#[test]
fn preempted_sequence_readmits_with_cache_hits() {
    // bs 2, 6 blocks: a and b each prefill 4 tokens (2 blocks, cached).
    let mut s = Scheduler::new(cfg(6, 2, 4, 16)).unwrap();
    let a = s.add(Request::new(vec![1, 2, 3, 4], 6)).unwrap();
    let b = s.add(Request::new(vec![5, 6, 7, 8], 6)).unwrap();
    let mut preempted = false;
    while s.has_unfinished() {
        let (plan, _) = step(&mut s, 0);
        if plan.preempted.contains(&b) {
            preempted = true;
        }
        if preempted {
            if let Some(e) = entry(&plan, b) {
                assert!(e.start > 0, "b's computed blocks were cached and hit");
                break;
            }
        }
    }
    assert!(preempted);
    assert!(s.stats().prefix_cache.preempted_hits > 0);
    assert_eq!(
        s.get(b).unwrap().cached_tokens,
        0,
        "cached_tokens is from the first admission"
    );
    let _ = a;
}
