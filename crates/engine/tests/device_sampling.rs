//! The batched engine with the backend's `sample` op (rows that need no
//! host logits sampled where the logits are) against the host sampler
//! (every row read back): every tiny fixture, greedy and seeded draws of
//! every parameter family, penalties and bias, beside rows that keep the
//! host path (log-probabilities) in the same steps; the tokens must be the
//! same, in the same steps. On the CPU backend both run the one selection
//! of `mm_core::sample`, so this checks what the engine hands the op: each
//! row's parameters, penalty lists and random number in the host order.

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
fn run(model: &DecoderModel, on_device: bool) -> Vec<(usize, u64, u32)> {
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
        let host = run(&model, false);
        let device = run(&model, true);
        assert_eq!(device, host, "{}", dir.display());
        assert!(host.len() > 100, "{}: {} tokens", dir.display(), host.len());
    }
}
