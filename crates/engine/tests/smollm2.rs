//! The real SmolLM2-135M-Instruct (Q4_1 GGUF) against transformers'
//! references (`tests/fixtures/smollm2`, made by `scripts/make_fixtures.py`):
//! tokenization identical, top-1 agreement 100% at every stored position,
//! mean KL(ref‖ours) ≤ 1e-3, 32-token greedy continuations identical.
//!
//! The model file comes from `$MM_SMOLLM2_GGUF` or the default-model cache
//! (`scripts/test.sh` fetches it). Without it the tests fail when
//! `MM_REQUIRE_SMOLLM2` is set (as in CI) and are skipped otherwise.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mm_backend_cpu::{ActPrecision, CpuBackend};
use mm_core::Device;
use mm_engine::tokenizer::{load_for, Tokenizer};
use mm_formats::{open_source, WeightSource};
use mm_models::npy::read_npy;
use mm_models::{load_model, DecoderModel};

/// Mean-KL bound for one pass of 8-bit activations.
const FAST_MAX_KL: f64 = 1e-2;

fn gguf_path() -> Option<PathBuf> {
    mm_engine::resolve::smollm2_for_tests()
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/smollm2")
}

type Loaded = (
    Box<dyn WeightSource>,
    DecoderModel,
    Tokenizer,
    serde_json::Value,
);

fn load_with(backend: CpuBackend) -> Option<Loaded> {
    let path = gguf_path()?;
    mm_engine::resolve::verify(&path)
        .expect("the SmolLM2 file is not the one the fixtures were made from");
    let src = open_source(&path).unwrap();
    let cpu: Arc<dyn mm_core::Backend> = Arc::new(backend);
    let model = load_model(src.as_ref(), &Device::new(cpu.clone(), cpu), &|_, _| {}).unwrap();
    let tok = load_for(&path, src.as_ref()).unwrap();
    let reference = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("reference.json")).unwrap(),
    )
    .unwrap();
    Some((src, model, tok, reference))
}

fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn log_softmax(x: &[f32]) -> Vec<f64> {
    let mx = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) as f64;
    let lse = x.iter().map(|v| (*v as f64 - mx).exp()).sum::<f64>().ln() + mx;
    x.iter().map(|v| *v as f64 - lse).collect()
}

/// Per logits case: (key, positions, top-1 agreements, mean KL(ref‖ours)).
fn logits_stats(backend: CpuBackend) -> Option<Vec<(String, usize, usize, f64)>> {
    let (src, model, tok, reference) = load_with(backend)?;
    let vocab = src.config().vocab_size;
    let mut stats = Vec::new();
    for case in reference["logits"].as_array().unwrap() {
        let key = case["key"].as_str().unwrap();
        let ids = u32s(&case["input_ids"]);
        let prompt = case["rendered_prompt"].as_str().unwrap();
        assert_eq!(
            tok.encode(prompt, true).unwrap(),
            ids,
            "{key}: tokenization differs from transformers"
        );
        let first = case["first_position"].as_u64().unwrap() as usize;
        let (shape, want) =
            read_npy(&fixture_dir().join(case["logits_file"].as_str().unwrap())).unwrap();
        let argmax = u32s(&case["argmax"]);
        let mut cache = model.new_cache(ids.len()).unwrap();
        let got = model
            .forward(&ids, &mut cache, true)
            .unwrap()
            .to_vec()
            .unwrap();
        let (mut kl_sum, mut top1) = (0.0f64, 0usize);
        for r in 0..shape[0] {
            let g = &got[(first + r) * vocab..(first + r + 1) * vocab];
            let w = &want[r * vocab..(r + 1) * vocab];
            let (lg, lw) = (log_softmax(g), log_softmax(w));
            kl_sum += lw
                .iter()
                .zip(&lg)
                .map(|(a, b)| a.exp() * (a - b))
                .sum::<f64>();
            top1 += (mm_engine::sampler::argmax(g) == argmax[r]) as usize;
        }
        let kl = kl_sum / shape[0] as f64;
        eprintln!(
            "{key}: {} positions, top-1 {top1}/{}, mean KL {kl:.2e}",
            shape[0], shape[0]
        );
        stats.push((key.to_string(), shape[0], top1, kl));
    }
    Some(stats)
}

/// The reference-precision path (f32 activations over dequantized weights).
#[test]
fn smollm2_logits_match_transformers() {
    let Some(stats) = logits_stats(CpuBackend::exact()) else {
        return;
    };
    for (key, n, top1, kl) in stats {
        assert_eq!(top1, n, "{key}: top-1 disagreement");
        assert!(kl <= 1e-3, "{key}: mean KL {kl:.3e} > 1e-3");
    }
}

/// The default fast path: native Q4_1/Q8_0 kernels with 8-bit activations
/// plus their 8-bit remainder (`ActPrecision::Int8Residual`). Measured: mean
/// KL 4.8e-6 (plain) and 3.8e-6 (chat), as close as the exact path.
#[test]
fn smollm2_native_kernels_match_transformers() {
    let Some(stats) = logits_stats(CpuBackend::new()) else {
        return;
    };
    for (key, n, top1, kl) in stats {
        assert_eq!(top1, n, "{key}: top-1 disagreement");
        assert!(kl <= 1e-4, "{key}: mean KL {kl:.3e} > 1e-4");
    }
}

/// One 8-bit activation pass (llama.cpp's precision): the distribution
/// moves a little (measured mean KL 3.0e-3 plain, 2.1e-3 chat, where the
/// chat prompt's first answer token, a 0.08-logit call, flips).
#[test]
fn smollm2_one_pass_int8_stays_close_to_transformers() {
    let Some(stats) = logits_stats(CpuBackend::with_activations(ActPrecision::Int8)) else {
        return;
    };
    for (key, n, top1, kl) in stats {
        assert!(
            top1 * 10 >= n * 9,
            "{key}: top-1 agreement {top1}/{n} < 90%"
        );
        assert!(
            kl <= FAST_MAX_KL,
            "{key}: mean KL {kl:.3e} > {FAST_MAX_KL:.0e}"
        );
    }
}

/// The default path's greedy continuations equal transformers' too.
#[test]
fn smollm2_native_greedy_matches_transformers() {
    greedy_matches(CpuBackend::new());
}

#[test]
fn smollm2_greedy_matches_transformers() {
    greedy_matches(CpuBackend::exact());
}

fn greedy_matches(backend: CpuBackend) {
    let Some((_src, model, tok, reference)) = load_with(backend) else {
        return;
    };
    for case in reference["greedy"].as_array().unwrap() {
        let key = case["key"].as_str().unwrap();
        let ids = u32s(&case["input_ids"]);
        let expect = u32s(&case["greedy_ids"]);
        let req = mm_engine::GenerateRequest {
            prompt_ids: ids,
            max_new_tokens: expect.len(),
            sampling: Default::default(),
            stop_strings: vec![],
            stop_on_eos: false,
            guide: None,
        };
        let mut engine = mm_engine::engine_for(&model, 512).unwrap();
        let out = mm_engine::generate(&mut engine, &tok, &req, &mut |_| Ok(())).unwrap();
        assert_eq!(out.ids, expect, "{key}: greedy ids differ");
        assert_eq!(
            out.text,
            case["greedy_text"].as_str().unwrap(),
            "{key}: greedy text differs"
        );
    }
}

/// Every greedy case at once through the batched engine (continuous
/// batching over one paged cache), each case twice: every sequence's
/// tokens equal transformers' greedy continuation. `budget` and `blocks`
/// shape the run: a small token budget chunks the prompts; few blocks force
/// preemption by recompute.
fn batched_greedy_matches(backend: CpuBackend, budget: usize, blocks: usize) -> u64 {
    batched_greedy_matches_kv(backend, budget, blocks, mm_core::KvDType::F32)
}

fn batched_greedy_matches_kv(
    backend: CpuBackend,
    budget: usize,
    blocks: usize,
    kv: mm_core::KvDType,
) -> u64 {
    use mm_engine::batch::{BatchEngine, BatchRequest};
    use mm_engine::sched::SchedulerConfig;
    let Some((_src, model, _tok, reference)) = load_with(backend) else {
        return 0;
    };
    let cfg = SchedulerConfig {
        max_num_seqs: 8,
        max_num_batched_tokens: budget,
        num_blocks: blocks,
        ..Default::default()
    };
    let mut eng = BatchEngine::new(&model, cfg, kv).unwrap();
    let mut want = std::collections::HashMap::new();
    for _ in 0..2 {
        for case in reference["greedy"].as_array().unwrap() {
            let expect = u32s(&case["greedy_ids"]);
            let id = eng
                .add(BatchRequest {
                    prompt: u32s(&case["input_ids"]),
                    max_new_tokens: expect.len(),
                    sampling: Default::default(),
                    eos: vec![],
                    logprobs: None,
                    guide: None,
                })
                .unwrap();
            want.insert(id, (case["key"].as_str().unwrap().to_string(), expect));
        }
    }
    let mut got: std::collections::HashMap<_, Vec<u32>> = Default::default();
    let mut steps = 0;
    while eng.has_unfinished() {
        for ev in eng.step().unwrap() {
            got.entry(ev.id).or_default().push(ev.token);
        }
        steps += 1;
        assert!(steps < 10_000, "the batch does not finish");
    }
    for (id, (key, expect)) in &want {
        assert_eq!(
            got.get(id),
            Some(expect),
            "{key} (sequence {id}): greedy ids differ"
        );
    }
    assert_eq!(
        eng.scheduler().pool().allocator().num_used(),
        0,
        "blocks leaked"
    );
    eng.scheduler().stats().num_preemptions
}

#[test]
fn smollm2_batched_greedy_matches_transformers() {
    batched_greedy_matches(CpuBackend::exact(), 2048, 1024);
}

#[test]
fn smollm2_batched_chunked_preempted_greedy_matches_transformers() {
    let preempted = batched_greedy_matches(CpuBackend::exact(), 24, 12);
    assert!(
        preempted > 0 || gguf_path().is_none(),
        "12 blocks should force preemption"
    );
}

/// The default precision batched: equal to transformers as well (prompt
/// rows of a step share dequantized panels once a step has 24 or more).
#[test]
fn smollm2_default_batched_greedy_matches_transformers() {
    batched_greedy_matches(CpuBackend::new(), 2048, 1024);
}

/// The serving default: keys and values stored in f16.
#[test]
fn smollm2_default_batched_f16_kv_greedy_matches_transformers() {
    batched_greedy_matches_kv(CpuBackend::new(), 64, 1024, mm_core::KvDType::F16);
}

/// Chunked prefill never stalls decoding streams: while a 3000-token
/// prompt is prefilled in chunks of a 256-token budget, two streams that
/// are already decoding get a token at every step.
#[test]
fn smollm2_long_prompt_is_chunked_while_streams_decode() {
    use mm_engine::batch::{BatchEngine, BatchRequest};
    use mm_engine::sched::SchedulerConfig;
    let Some((_src, model, _tok, reference)) = load_with(CpuBackend::new()) else {
        return;
    };
    let cfg = SchedulerConfig {
        max_num_seqs: 8,
        max_num_batched_tokens: 256,
        num_blocks: 512,
        ..Default::default()
    };
    let mut eng = BatchEngine::new(&model, cfg, mm_core::KvDType::F16).unwrap();
    let short = u32s(&reference["greedy"][0]["input_ids"]);
    let ids: Vec<_> = (0..2)
        .map(|_| {
            eng.add(BatchRequest {
                prompt: short.clone(),
                max_new_tokens: 200,
                ..Default::default()
            })
            .unwrap()
        })
        .collect();
    // Until both short streams decode.
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2 {
        for ev in eng.step().unwrap() {
            seen.insert(ev.id);
        }
    }
    // A 3000-token prompt (the fixture text repeated).
    let long: Vec<u32> = short.iter().copied().cycle().take(3000).collect();
    let big = eng
        .add(BatchRequest {
            prompt: long,
            max_new_tokens: 1,
            ..Default::default()
        })
        .unwrap();
    let mut steps = 0;
    loop {
        let evs = eng.step().unwrap();
        steps += 1;
        for id in &ids {
            assert!(
                evs.iter().any(|e| e.id == *id),
                "decoding stream {id} got no token in step {steps} of the long prefill"
            );
        }
        if evs.iter().any(|e| e.id == big) {
            break;
        }
        assert!(steps < 100, "the long prompt never finished its prefill");
    }
    assert!(
        steps >= 11,
        "3000 tokens in a 256-token budget take 12 steps, took {steps}"
    );
}
