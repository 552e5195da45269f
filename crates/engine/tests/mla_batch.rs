//! Multi-head latent attention models through the batched engine: the
//! tiny DeepSeek-V2/V3 and GLM-4.7-Flash fixtures' greedy prompt twice in
//! one batch (the second copy from the prefix cache where a block is full)
//! plus a longer prompt, under a small token budget (prompts prefilled in
//! chunks after their cached latents, beside decoding rows: both MLA forms
//! in one step) and with few blocks (preemption by recompute). The
//! reference prompt's continuation must be transformers' greedy ids; the
//! longer prompt's the model's own single-sequence greedy run (which
//! `crates/models/tests/tiny_mla.rs` checks against transformers).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use mm_backend_cpu::CpuBackend;
use mm_core::{Device, KvDType};
use mm_engine::batch::{BatchEngine, BatchRequest};
use mm_engine::sched::SchedulerConfig;
use mm_formats::open_source;
use mm_models::{load_model, DecoderModel};

const MLA: [&str; 3] = ["deepseek-v2", "deepseek-v3-yarn", "glm4-moe-lite"];

fn load(name: &str, backend: CpuBackend) -> (DecoderModel, serde_json::Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(name);
    let src = open_source(&dir).unwrap();
    let b: Arc<dyn mm_core::Backend> = Arc::new(backend);
    let model = load_model(src.as_ref(), &Device::new(b.clone(), b), &|_, _| {}).unwrap();
    let r = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
        .unwrap();
    (model, r)
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Greedy ids of `prompt` through the single-sequence path.
fn solo_greedy(model: &DecoderModel, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = model.new_cache(256).unwrap();
    let mut logits = model.forward(prompt, &mut cache, false).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let l = logits.to_vec().unwrap();
        let next = (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b }) as u32;
        out.push(next);
        logits = model.forward(&[next], &mut cache, false).unwrap();
    }
    out
}

/// Runs the three requests; returns the preemptions.
fn run(name: &str, backend: CpuBackend, kv: KvDType, budget: usize, blocks: usize) -> u64 {
    let (model, r) = load(name, backend);
    let prompt = ids(&r["greedy_prompt"]);
    let expect = ids(&r["greedy_ids"]);
    let long: Vec<u32> = prompt
        .iter()
        .chain(prompt.iter())
        .copied()
        .take(30)
        .collect();
    let long_expect = solo_greedy(&model, &long, 12);
    let cfg = SchedulerConfig {
        max_num_seqs: 4,
        max_num_batched_tokens: budget,
        num_blocks: blocks,
        ..Default::default()
    };
    let mut eng = BatchEngine::new(&model, cfg, kv).unwrap();
    let mut want = HashMap::new();
    for (p, e) in [
        (&prompt, &expect),
        (&long, &long_expect),
        (&prompt, &expect),
    ] {
        let id = eng
            .add(BatchRequest {
                prompt: p.clone(),
                max_new_tokens: e.len(),
                sampling: Default::default(),
                eos: vec![],
                logprobs: None,
                guide: None,
            })
            .unwrap();
        want.insert(id, e.clone());
    }
    let mut got: HashMap<_, Vec<u32>> = HashMap::new();
    let mut steps = 0;
    while eng.has_unfinished() {
        for ev in eng.step().unwrap() {
            got.entry(ev.id).or_default().push(ev.token);
        }
        steps += 1;
        assert!(steps < 10_000, "{name}: the batch does not finish");
    }
    for (id, e) in &want {
        assert_eq!(
            got.get(id),
            Some(e),
            "{name} (sequence {id}): greedy ids differ"
        );
    }
    assert_eq!(
        eng.scheduler().pool().allocator().num_used(),
        0,
        "{name}: blocks leaked"
    );
    eng.scheduler().stats().num_preemptions
}

#[test]
fn mla_batched_chunked_greedy_matches_transformers() {
    for name in MLA {
        run(name, CpuBackend::exact(), KvDType::F32, 8, 256);
        run(name, CpuBackend::new(), KvDType::F16, 8, 256);
    }
}

#[test]
fn mla_batched_preempted_greedy_matches_transformers() {
    for name in MLA {
        let preempted = run(name, CpuBackend::exact(), KvDType::F32, 16, 6);
        assert!(preempted > 0, "{name}: 6 blocks should force preemption");
    }
}
