//! Every architecture against transformers: tiny random-weight models saved
//! in bf16 by `scripts/make_fixtures.py`, with reference logits computed by
//! transformers in f32. The exact path (`CpuBackend::exact()`, the
//! verification mode): max |Δlogit| ≤ 1e-3 · max |logit| (measured ≤ 1e-6
//! relative), and the 16-token greedy continuation identical. The default
//! path, the same checks within 2e-3 (measured: up to 1.14e-3): its f16
//! KV cache alone is off by up to 0.57e-3 · max |logit| on these 64-wide
//! random models, and its prompt rows' 16-bit operands (dense weights on
//! AVX2) move the logits by up to 1.0e-3 more.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::ids;
use mm_backend_cpu::CpuBackend;
use mm_core::Device;
use mm_formats::open_source;
use mm_models::{load_model, npy::read_npy};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny")
}

fn cpu() -> Device {
    cpu_with(CpuBackend::new())
}

fn cpu_with(b: CpuBackend) -> Device {
    let b: Arc<dyn mm_core::Backend> = Arc::new(b);
    Device::new(b.clone(), b)
}

/// Loads `dir` and checks logits and greedy continuation against its
/// reference, on the exact and on the default path.
fn check_model(dir: &Path, reference_dir: &Path) {
    let exact = cpu_with(CpuBackend::exact());
    check_model_on(dir, reference_dir, (&exact, "exact"), 1e-3);
    check_model_on(dir, reference_dir, (&cpu(), "default"), 2e-3);
}

/// [`check_model`] on `device` (and its label): max |Δlogit| ≤ `tol` ·
/// max |logit|.
fn check_model_on(dir: &Path, reference_dir: &Path, (device, label): (&Device, &str), tol: f32) {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reference_dir.join("reference.json")).unwrap(),
    )
    .unwrap();
    let src = open_source(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let model = load_model(src.as_ref(), device, &|_, _| {}).unwrap();
    let input = ids(&reference, "input_ids");
    let (shape, want) = read_npy(&reference_dir.join("logits.npy")).unwrap();
    let mut cache = model.new_cache(256).unwrap();
    let got = model.forward(&input, &mut cache, true).unwrap();
    assert_eq!(got.shape(), shape.as_slice());
    let got = got.to_vec().unwrap();
    let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_err = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        max_err <= tol * max_ref,
        "{} ({label}): max |Δlogit| {max_err:.3e} > {tol:.0e} × {max_ref:.3}",
        dir.display(),
    );

    // Greedy continuation, one token at a time through the KV cache.
    let prompt = ids(&reference, "greedy_prompt");
    let expect = ids(&reference, "greedy_ids");
    let mut cache = model.new_cache(256).unwrap();
    let mut logits = model
        .forward(&prompt, &mut cache, false)
        .unwrap()
        .to_vec()
        .unwrap();
    let mut out = Vec::new();
    for _ in 0..expect.len() {
        let next = argmax(&logits);
        out.push(next);
        logits = model
            .forward(&[next], &mut cache, false)
            .unwrap()
            .to_vec()
            .unwrap();
    }
    assert_eq!(
        out,
        expect,
        "{} ({label}): greedy continuation differs",
        dir.display()
    );
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

macro_rules! arch_test {
    ($name:ident, $dir:literal) => {
        #[test]
        fn $name() {
            let d = fixtures().join($dir);
            check_model(&d, &d);
        }
    };
}

arch_test!(llama_gqa_untied, "llama");
arch_test!(llama_mqa_tied, "llama-mqa-tied");
arch_test!(llama3_rope_scaling, "llama3-rope");
arch_test!(llama_linear_rope_scaling, "llama-linear-rope");
arch_test!(mistral, "mistral");
arch_test!(qwen2_qkv_bias, "qwen2");
arch_test!(qwen3_qk_norm_head_dim, "qwen3");
arch_test!(deepseek_v2_mla_no_q_lora, "deepseek-v2");
arch_test!(deepseek_v3_mla_yarn, "deepseek-v3-yarn");
arch_test!(
    deepseek_v3_mla_yarn_interleaved,
    "deepseek-v3-yarn-interleaved"
);
arch_test!(glm4_moe_lite_mla_interleaved, "glm4-moe-lite");
arch_test!(qwen3_moe_softmax_top2, "qwen3-moe");
arch_test!(qwen3_moe_renorm_sparse_step, "qwen3-moe-renorm");
arch_test!(qwen3_moe_every_layer_sparse, "qwen3-moe-sparse");
arch_test!(mixtral_moe, "mixtral");
arch_test!(glm4_moe_groups_bias_shared, "glm4-moe");
arch_test!(glm4_moe_plain_two_shared, "glm4-moe-plain");

/// The same weights with the pre-v5 `rope_theta`/`rope_scaling` config keys.
#[test]
fn legacy_rope_config_keys() {
    for name in ["llama", "llama3-rope"] {
        let src = fixtures().join(name);
        assert!(
            src.join("config.legacy.json").exists(),
            "{name}: config.legacy.json missing"
        );
        let tmp = std::env::temp_dir().join(format!("mm-legacy-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::copy(src.join("config.legacy.json"), tmp.join("config.json")).unwrap();
        std::fs::copy(src.join("model.safetensors"), tmp.join("model.safetensors")).unwrap();
        check_model(&tmp, &src);
        std::fs::remove_dir_all(&tmp).ok();
    }
}

/// The weight summary counts every stored tensor once (a tied embedding
/// once) and a decoded token reads all but the embedding table's other rows.
#[test]
fn weight_summary_matches_the_checkpoint() {
    for name in ["llama", "llama-mqa-tied", "qwen2", "qwen3"] {
        let dir = fixtures().join(name);
        let src = open_source(&dir).unwrap();
        let model = load_model(src.as_ref(), &cpu(), &|_, _| {}).unwrap();
        let s = model.weight_summary();
        let mut bytes = 0;
        let mut params = 0;
        for (n, _, _) in src.describe() {
            let w = src.tensor(&n).unwrap();
            bytes += w.stored_bytes();
            params += w.numel();
        }
        assert_eq!((s.bytes, s.params), (bytes, params), "{name}");
        let c = src.config();
        let embed = src
            .tensor("model.embed_tokens.weight")
            .unwrap()
            .stored_bytes();
        let expect = if c.tie_word_embeddings {
            bytes + embed / c.vocab_size
        } else {
            bytes - embed + embed / c.vocab_size
        };
        assert_eq!(s.bytes_per_token, expect, "{name}");
    }
}
