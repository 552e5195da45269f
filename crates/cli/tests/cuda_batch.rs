//! The batched engine on the GPU (feature `cuda`): sequences of different
//! prompt lengths and budgets decode together, so the batch shrinks as
//! they finish and decode steps of several row counts are recorded and
//! replayed as CUDA graphs. With graphs on and off every sampled token and
//! its log-probability must be the same bits, on each tiny fixture.
//!
//! Without a GPU the test says why and passes; `MM_REQUIRE_CUDA=1`
//! (`scripts/test-cuda.sh run`) makes that a failure.
#![cfg(feature = "cuda")]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mm_backend_cuda::CudaBackend;
use mm_core::Device;
use mm_engine::batch::{BatchEngine, BatchRequest};
use mm_engine::sched::SchedulerConfig;
use mm_models::DecoderModel;

fn gpu() -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        // Sampling and the kernels not yet run on a GPU, on.
        Ok(b) => Some(b.device_sampling(true).next_kernels(true)),
        Err(e) if std::env::var_os("MM_REQUIRE_CUDA").is_none_or(|v| v != "1") => {
            eprintln!("skipped (no usable GPU): {e}");
            None
        }
        Err(e) => panic!("MM_REQUIRE_CUDA=1 but: {e}"),
    }
}

/// A fixture's model on the GPU (the CPU as fallback).
fn load(model_dir: &Path, gpu: CudaBackend) -> DecoderModel {
    let cpu: Arc<dyn mm_core::Backend> = Arc::new(mm_backend_cpu::CpuBackend::new());
    let device = Device::new(Arc::new(gpu), cpu);
    let src = mm_formats::open_source(model_dir).expect("fixture");
    mm_models::load_model(src.as_ref(), &device, &|_, _| {}).expect("model")
}

fn engine(model: &DecoderModel) -> BatchEngine<'_> {
    let cfg = SchedulerConfig {
        num_blocks: 64,
        ..Default::default()
    };
    BatchEngine::new(model, cfg, model.default_kv_dtype()).expect("engine")
}

/// The tiny fixtures, from the build tree or from the repository root (the
/// GPU machine runs the test binary there, elsewhere than it was built).
fn fixtures() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
    if built.is_dir() {
        built
    } else {
        Path::new("tests/fixtures/tiny").to_path_buf()
    }
}

/// Every event of a run: (sequence, token, log-probability bits).
fn run(model_dir: &Path, gpu: CudaBackend) -> Vec<(u64, u32, u32)> {
    let model = load(model_dir, gpu);
    let mut engine = engine(&model);
    let vocab = model.config.vocab_size as u32;
    for (len, budget) in [(5u32, 24usize), (9, 16), (2, 30), (1, 20)] {
        engine
            .add(BatchRequest {
                prompt: (0..len).map(|i| (7 * i + len) % vocab).collect(),
                max_new_tokens: budget,
                logprobs: Some(0),
                ..Default::default()
            })
            .expect("request");
    }
    let mut events = Vec::new();
    while engine.has_unfinished() {
        for e in engine.step().expect("step") {
            let lp = e.logprobs.expect("logprobs").logprob;
            events.push((e.id, e.token, lp.to_bits()));
        }
    }
    events
}

#[test]
fn batched_decode_is_the_same_with_and_without_graphs() {
    let Some(b) = gpu() else { return };
    let root = fixtures();
    for name in ["llama", "qwen3", "llama-mqa-tied"] {
        let dir = root.join(name);
        let with = run(&dir, b.clone().graphs(true));
        let without = run(&dir, b.clone().graphs(false));
        assert_eq!(with.len(), 24 + 16 + 30 + 20, "{name}: every token sampled");
        assert_eq!(with, without, "{name}: graphs changed the decode");
    }
}

/// Every event of a run with sampling on the GPU (`on_device`) or on the
/// host: (sequence, token). Greedy and seeded draws over few candidates
/// (top-k 8: a boundary within the sampler's tolerance is too unlikely to
/// meet), penalties and bias.
fn run_sampled(model_dir: &Path, gpu: CudaBackend, on_device: bool) -> Vec<(u64, u32)> {
    use mm_engine::SamplingParams;
    let model = load(model_dir, gpu);
    let mut engine = engine(&model);
    engine.set_device_sampling(on_device);
    let vocab = model.config.vocab_size as u32;
    let params = [
        SamplingParams::default(),
        SamplingParams {
            temperature: 0.9,
            top_k: 8,
            top_p: 0.9,
            seed: 3,
            ..Default::default()
        },
        SamplingParams {
            temperature: 1.1,
            top_k: 8,
            min_p: 0.05,
            repeat_penalty: 1.3,
            presence_penalty: 0.4,
            frequency_penalty: 0.2,
            logit_bias: vec![(5, 1.0), (9, -2.0)],
            seed: 4,
            ..Default::default()
        },
        SamplingParams {
            repeat_penalty: 1.2,
            logit_bias: vec![(17, 0.5)],
            ..Default::default()
        },
    ];
    for (i, p) in params.into_iter().enumerate() {
        engine
            .add(BatchRequest {
                prompt: (0..3 + i as u32)
                    .map(|j| (11 * j + i as u32) % vocab)
                    .collect(),
                max_new_tokens: 20,
                sampling: p,
                ..Default::default()
            })
            .expect("request");
    }
    let mut events = Vec::new();
    while engine.has_unfinished() {
        for e in engine.step().expect("step") {
            events.push((e.id, e.token));
        }
    }
    events
}

/// The engine's sampling on the GPU (only the ids come back) picks the
/// host sampler's tokens, decode steps replayed as graphs.
#[test]
fn sampling_on_the_gpu_equals_the_host_sampler() {
    let Some(b) = gpu() else { return };
    let root = fixtures();
    for name in ["llama", "qwen3", "qwen3-moe"] {
        let dir = root.join(name);
        let host = run_sampled(&dir, b.clone(), false);
        let device = run_sampled(&dir, b.clone(), true);
        assert_eq!(host.len(), 80, "{name}: every token sampled");
        assert_eq!(device, host, "{name}: GPU sampling differs from the host's");
    }
}
