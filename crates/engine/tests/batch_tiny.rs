//! Every tiny fixture (dense and mixture-of-experts, made by transformers)
//! through the paged, continuously batched engine: each fixture's greedy
//! prompt three times in one batch, beside shorter prompts, with a token
//! budget that chunks the prefills and few KV blocks (preemption by
//! recompute), on the exact path (f32 KV) and the default path (f16 KV):
//! every copy's greedy continuation equals transformers', and no block
//! leaks. MoE layers see tokens of several sequences, prompt and generated
//! rows mixed, routed to shared experts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mm_backend_cpu::CpuBackend;
use mm_core::{Device, KvDType};
use mm_engine::batch::{BatchEngine, BatchRequest};
use mm_engine::sched::SchedulerConfig;
use mm_formats::open_source;
use mm_models::load_model;

fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Returns the preemptions the run took.
fn check(dir: &Path, backend: CpuBackend, kv: KvDType) -> u64 {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let (prompt, expect) = (
        ids(&reference["greedy_prompt"]),
        ids(&reference["greedy_ids"]),
    );
    let b: Arc<dyn mm_core::Backend> = Arc::new(backend);
    let src = open_source(dir).unwrap();
    let model = load_model(src.as_ref(), &Device::new(b.clone(), b), &|_, _| {}).unwrap();
    let cfg = SchedulerConfig {
        max_num_seqs: 6,
        max_num_batched_tokens: 9,
        block_size: 4,
        num_blocks: 16,
        ..Default::default()
    };
    let mut eng = BatchEngine::new(&model, cfg, kv).unwrap();
    let request = |prompt: Vec<u32>, n: usize| BatchRequest {
        prompt,
        max_new_tokens: n,
        sampling: Default::default(),
        eos: vec![],
        logprobs: None,
        guide: None,
    };
    let mut want = Vec::new();
    for i in 0..3 {
        want.push(eng.add(request(prompt.clone(), expect.len())).unwrap());
        eng.add(request(prompt[i..i + 3].to_vec(), 5)).unwrap();
    }
    let mut got: std::collections::HashMap<_, Vec<u32>> = Default::default();
    let mut steps = 0;
    while eng.has_unfinished() {
        for ev in eng.step().unwrap() {
            got.entry(ev.id).or_default().push(ev.token);
        }
        steps += 1;
        assert!(
            steps < 10_000,
            "{}: the batch does not finish",
            dir.display()
        );
    }
    for id in want {
        assert_eq!(
            got.get(&id),
            Some(&expect),
            "{} ({kv:?}, sequence {id}): greedy ids differ from transformers'",
            dir.display()
        );
    }
    assert_eq!(
        eng.scheduler().pool().allocator().num_used(),
        0,
        "{}: blocks leaked",
        dir.display()
    );
    eng.scheduler().stats().num_preemptions
}

#[test]
fn every_tiny_fixture_batched_exact() {
    let preempted: u64 = fixtures()
        .iter()
        .map(|d| check(d, CpuBackend::exact(), KvDType::F32))
        .sum();
    assert!(preempted > 0, "no run was preempted");
}

#[test]
fn every_tiny_fixture_batched_default() {
    let preempted: u64 = fixtures()
        .iter()
        .map(|d| check(d, CpuBackend::new(), KvDType::F16))
        .sum();
    assert!(preempted > 0, "no run was preempted");
}
