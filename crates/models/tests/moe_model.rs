//! MoE models beyond their logits (those are in tiny_models.rs): the
//! weight summary of routed experts, clear errors for checkpoints that do
//! not match their config, and the linear observer (GPTQ calibration)
//! seeing each expert's own tokens without changing the outputs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mm_backend_cpu::CpuBackend;
use mm_core::{Device, Tensor};
use mm_formats::open_source;
use mm_models::layers::Ffn;
use mm_models::{load_model, DecoderModel, LinearObserver};

const MOE: [&str; 10] = [
    "qwen3-moe",
    "qwen3-moe-renorm",
    "qwen3-moe-sparse",
    "mixtral",
    "glm4-moe",
    "glm4-moe-plain",
    "deepseek-v2",
    "deepseek-v3-yarn",
    "deepseek-v3-yarn-interleaved",
    "glm4-moe-lite",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(name)
}

fn cpu() -> Device {
    let b: Arc<dyn mm_core::Backend> = Arc::new(CpuBackend::exact());
    Device::new(b.clone(), b)
}

fn load(dir: &Path) -> mm_core::Result<DecoderModel> {
    let src = open_source(dir)?;
    load_model(src.as_ref(), &cpu(), &|_, _| {})
}

/// Every stored tensor counted once; a token reads `top_k` of each MoE
/// layer's `num_experts` routed experts (they are of one size here).
#[test]
fn weight_summary_counts_routed_experts() {
    for name in MOE {
        let dir = fixture(name);
        let src = open_source(&dir).unwrap();
        let model = load_model(src.as_ref(), &cpu(), &|_, _| {}).unwrap();
        let c = src.config();
        let m = c.moe.as_ref().unwrap();
        let (mut bytes, mut params, mut experts) = (0, 0, 0);
        for (n, _, _) in src.describe() {
            let w = src.tensor(&n).unwrap();
            bytes += w.stored_bytes();
            params += w.numel();
            if n.contains(".experts.") {
                experts += w.stored_bytes();
            }
        }
        let s = model.weight_summary();
        assert_eq!((s.bytes, s.params), (bytes, params), "{name}");
        let embed = src
            .tensor("model.embed_tokens.weight")
            .unwrap()
            .stored_bytes();
        assert!(c.tie_word_embeddings, "{name}");
        let unread = experts / m.num_experts * (m.num_experts - m.experts_per_token);
        assert_eq!(
            s.bytes_per_token,
            bytes - unread + embed / c.vocab_size,
            "{name}"
        );
    }
}

/// Copies `name` into a temporary directory with its config edited.
fn edited(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let src = fixture(name);
    let dir = std::env::temp_dir().join(format!("mm-moe-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    let e = match load(dir) {
        Ok(_) => panic!("{}: expected an error", dir.display()),
        Err(e) => e.to_string(),
    };
    std::fs::remove_dir_all(dir).ok();
    e
}

#[test]
fn checkpoints_that_do_not_match_the_config_are_clear_errors() {
    // One expert more than the checkpoint holds.
    let e = load_err(&edited("qwen3-moe", |c| c["num_local_experts"] = 9.into()));
    assert!(
        e.contains("'model.layers.1.mlp.gate.weight'") && e.contains("[9, 64]"),
        "{e}"
    );
    // Experts of another width.
    let e = load_err(&edited("mixtral", |c| c["intermediate_size"] = 48.into()));
    assert!(
        e.contains("model.layers.0.block_sparse_moe.experts.0.w1.weight") && e.contains("48"),
        "{e}"
    );
    // A layer the checkpoint has as MoE, configured dense.
    let e = load_err(&edited("glm4-moe", |c| {
        c["first_k_dense_replace"] = 2.into()
    }));
    assert!(e.contains("model.layers.1.mlp.gate_proj.weight"), "{e}");
    // No correction bias where the architecture has one.
    let e = load_err(&edited("qwen3-moe", |c| {
        c["architectures"] = serde_json::json!(["Glm4MoeForCausalLM"]);
        c["n_routed_experts"] = 8.into();
        c["first_k_dense_replace"] = 1.into();
        c["n_shared_experts"] = 0.into();
        c["partial_rotary_factor"] = 1.0.into();
    }));
    assert!(e.contains("e_score_correction_bias"), "{e}");
}

/// Under an observer each expert sees exactly the rows routed to it (all
/// its picks over the layer add up to tokens × top_k), its down projection
/// the SwiGLU of those rows; the logits stay bit-identical.
#[test]
fn observer_sees_each_experts_tokens() {
    for name in ["qwen3-moe", "glm4-moe", "deepseek-v2", "glm4-moe-lite"] {
        let mut model = load(&fixture(name)).unwrap();
        let ids: Vec<u32> = (0..11).map(|i| (i * 37 + 5) % 320).collect();
        let run = |m: &DecoderModel| {
            let mut cache = m.new_cache(32).unwrap();
            m.forward(&ids, &mut cache, true).unwrap().to_vec().unwrap()
        };
        let plain = run(&model);
        let rows: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let r = rows.clone();
        let observer: LinearObserver = Arc::new(move |name: &str, x: &Tensor| {
            *r.lock().unwrap().entry(name.to_string()).or_default() += x.dims2()?.0;
            Ok(())
        });
        model.set_linear_observer(Some(observer));
        let observed = run(&model);
        assert!(
            plain
                .iter()
                .zip(&observed)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: logits changed under the observer"
        );
        let rows = rows.lock().unwrap();
        let m = model.config.moe.clone().unwrap();
        for l in 0..model.num_layers() {
            let Ffn::Moe(moe) = &model.layer(l).unwrap().ffn else {
                continue;
            };
            let mut total = 0;
            for x in moe.experts() {
                let g = rows.get(x.gate.name()).copied().unwrap_or(0);
                assert_eq!(rows.get(x.up.name()).copied().unwrap_or(0), g);
                assert_eq!(rows.get(x.down.name()).copied().unwrap_or(0), g);
                total += g;
            }
            assert_eq!(total, ids.len() * m.experts_per_token, "{name} layer {l}");
            // The router sees every token.
            let router = format!("model.layers.{l}.mlp.gate.weight");
            assert_eq!(rows.get(&router), Some(&ids.len()), "{name} layer {l}");
        }
    }
}
