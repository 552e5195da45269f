//! Every tiny fixture (dense and mixture-of-experts, made by transformers)
//! through the paged, continuously batched engine: each fixture's greedy
//! prompt three times in one batch, beside shorter prompts, with a token
//! budget that chunks the prefills and few KV blocks (preemption by
//! recompute), on the exact path (f32 KV) and the default path (f16 KV):
//! every copy's greedy continuation equals transformers', and no block
//! leaks. MoE layers see tokens of several sequences, prompt and generated
//! rows mixed, routed to shared experts.
//!
//! Sampling: the engine with the backend's `sample` op (rows that need no
//! host logits sampled where the logits are) against the host sampler
//! (every row read back), on every fixture: greedy and seeded draws of
//! every parameter family, penalties and bias, beside rows that keep the
//! host path (log-probabilities) in the same steps, must give the same
//! tokens in the same steps. On the CPU backend both run the one
//! selection of `mm_core::sample`, so this checks what the engine hands
//! the op: each row's parameters, penalty lists and random number, drawn
//! in the host's order.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mm_backend_cpu::CpuBackend;
use mm_core::{Device, KvDType};
use mm_engine::batch::{BatchEngine, BatchRequest};
use mm_engine::sched::SchedulerConfig;
use mm_engine::SamplingParams;
use mm_formats::open_source;
use mm_models::{load_model, DecoderModel};

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

/// One request per sampling family (seeded), two asking for
/// log-probabilities (host rows in the same steps).
fn requests(vocab: u32) -> Vec<BatchRequest> {
    let base = SamplingParams::default();
    let families = [
        base.clone(),
        SamplingParams {
            temperature: 0.8,
            seed: 1,
            ..base.clone()
        },
        SamplingParams {
            temperature: 1.2,
            top_k: 5,
            seed: 2,
            ..base.clone()
        },
        SamplingParams {
            temperature: 1.0,
            top_p: 0.7,
            seed: 3,
            ..base.clone()
        },
        SamplingParams {
            temperature: 1.0,
            min_p: 0.1,
            seed: 4,
            ..base.clone()
        },
        SamplingParams {
            temperature: 0.9,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.02,
            repeat_penalty: 1.3,
            repeat_last_n: 8,
            presence_penalty: 0.5,
            frequency_penalty: 0.3,
            logit_bias: vec![(3, 2.0), (7, -1.0), (3, 0.5), (vocab + 5, 1.0)],
            seed: 5,
        },
        SamplingParams {
            repeat_penalty: 1.5,
            frequency_penalty: -0.4,
            logit_bias: vec![(11, 1.5)],
            ..base.clone()
        },
        SamplingParams {
            temperature: 1.5,
            top_k: usize::MAX,
            seed: 6,
            ..base.clone()
        },
    ];
    let mut v: Vec<BatchRequest> = families
        .iter()
        .enumerate()
        .map(|(i, p)| BatchRequest {
            prompt: (0..3 + i as u32)
                .map(|j| (13 * j + 5 * i as u32 + 1) % vocab)
                .collect(),
            max_new_tokens: 12 + i,
            sampling: p.clone(),
            ..Default::default()
        })
        .collect();
    for (i, p) in [&families[0], &families[3]].into_iter().enumerate() {
        v.push(BatchRequest {
            prompt: vec![2 + i as u32, 9, 4],
            max_new_tokens: 10,
            sampling: p.clone(),
            logprobs: Some(2),
            ..Default::default()
        });
    }
    v
}

/// Every event of a run: (step, sequence, token).
fn run_sampled(model: &DecoderModel, on_device: bool) -> Vec<(usize, u64, u32)> {
    let cfg = SchedulerConfig {
        max_num_seqs: 6,
        max_num_batched_tokens: 24,
        block_size: 4,
        num_blocks: 64,
        ..Default::default()
    };
    let mut eng = BatchEngine::new(model, cfg, KvDType::F32).unwrap();
    eng.set_device_sampling(on_device);
    for r in requests(model.config.vocab_size as u32) {
        eng.add(r).unwrap();
    }
    let mut events = Vec::new();
    let mut step = 0;
    while eng.has_unfinished() {
        for e in eng.step().unwrap() {
            events.push((step, e.id, e.token));
        }
        step += 1;
        assert!(step < 10_000, "the batch does not finish");
    }
    events
}

#[test]
fn device_sampling_equals_the_host_sampler_on_every_tiny_fixture() {
    for dir in fixtures() {
        let b: Arc<dyn mm_core::Backend> = Arc::new(CpuBackend::new());
        let src = open_source(&dir).unwrap();
        let model = load_model(src.as_ref(), &Device::new(b.clone(), b), &|_, _| {}).unwrap();
        assert!(model.device().supports_sampling());
        let host = run_sampled(&model, false);
        let device = run_sampled(&model, true);
        assert_eq!(device, host, "{}", dir.display());
        assert!(host.len() > 100, "{}: {} tokens", dir.display(), host.len());
    }
}
