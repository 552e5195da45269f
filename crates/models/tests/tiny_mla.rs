//! Multi-head latent attention against transformers, beyond the per-arch
//! checks of `tiny_models.rs`: both forms (expanded and absorbed) forced on
//! every row, on the prompt and one token at a time (each decode step's
//! logits against transformers' logits of that position), the compressed
//! cache's size, and the MoE layers (dense first layer, experts, shared
//! experts, correction bias) loaded by name.
//! Fixtures: DeepSeek-V2 (no q_lora, complex RoPE pairs), DeepSeek-V3
//! (YaRN with mscale, rotate-half RoPE; and interleaved with mscale =
//! mscale_all_dim, as GGUF holds it), GLM-4.7-Flash (interleaved RoPE,
//! biases, v wider than q/k), made by `scripts/make_fixtures.py`.

mod common;

use std::path::{Path, PathBuf};

use common::{device, greedy, ids, rel_err};
use mm_core::{Device, KvDType, Result, WeightData};
use mm_formats::{open_source, ModelConfig, WeightSource};
use mm_models::layers::Ffn;
use mm_models::{load_model, npy::read_npy, DecoderModel, MlaForm};

const MLA: [&str; 4] = [
    "deepseek-v2",
    "deepseek-v3-yarn",
    "deepseek-v3-yarn-interleaved",
    "glm4-moe-lite",
];
const FORMS: [MlaForm; 3] = [MlaForm::Auto, MlaForm::Expanded, MlaForm::Absorbed];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(name)
}

fn load(name: &str, dev: &Device) -> DecoderModel {
    let src = open_source(&fixture(name)).unwrap();
    load_model(src.as_ref(), dev, &|_, _| {}).unwrap()
}

fn reference(name: &str) -> (serde_json::Value, Vec<f32>, usize) {
    let d = fixture(name);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("reference.json")).unwrap()).unwrap();
    let (shape, logits) = read_npy(&d.join("logits.npy")).unwrap();
    (r, logits, shape[1])
}

/// The prompt's logits in one forward pass and one token at a time (every
/// row but the first a generated row), in each form, exact and default:
/// within 1e-3 (exact) and 2e-3 (default, f16 cache) of transformers.
#[test]
fn both_forms_match_transformers_on_the_prompt_and_step_by_step() {
    for name in MLA {
        let (r, want, vocab) = reference(name);
        let input = ids(&r, "input_ids");
        for (exact, tol) in [(true, 1e-3), (false, 2e-3)] {
            let mut model = load(name, &device(exact));
            for form in FORMS {
                model.set_mla_form(form);
                let mut cache = model.new_cache(256).unwrap();
                let got = model
                    .forward(&input, &mut cache, true)
                    .unwrap()
                    .to_vec()
                    .unwrap();
                let e_prompt = rel_err(&got, &want);
                let mut cache = model.new_cache(256).unwrap();
                let mut steps = Vec::with_capacity(want.len());
                for &id in &input {
                    let l = model.forward(&[id], &mut cache, false).unwrap();
                    steps.extend(l.to_vec().unwrap());
                }
                let e_steps = rel_err(&steps, &want);
                eprintln!(
                    "{name} exact={exact} {form:?}: prompt {e_prompt:.2e}, steps {e_steps:.2e} (vocab {vocab})"
                );
                assert!(
                    e_prompt <= tol && e_steps <= tol,
                    "{name} exact={exact} {form:?}: prompt {e_prompt:.2e}, steps {e_steps:.2e} > {tol:.0e}"
                );
            }
        }
    }
}

/// The 16-token greedy continuation is transformers' in every form.
#[test]
fn greedy_continuations_match_in_every_form() {
    for name in MLA {
        let (r, _, _) = reference(name);
        let (prompt, expect) = (ids(&r, "greedy_prompt"), ids(&r, "greedy_ids"));
        let mut model = load(name, &device(true));
        for form in FORMS {
            model.set_mla_form(form);
            assert_eq!(
                greedy(&model, &prompt, expect.len()),
                expect,
                "{name} {form:?}"
            );
        }
    }
}

/// The cache keeps the latent and the rotated key per token and layer,
/// nothing else: (kv_lora_rank + qk_rope_head_dim) values, no value store.
#[test]
fn the_cache_holds_only_latent_and_rotated_key() {
    for name in MLA {
        let model = load(name, &device(true));
        let c = &model.config;
        let m = c.mla.unwrap();
        assert_eq!(model.kv_widths(), (m.kv_lora_rank + m.qk_rope_head_dim, 0));
        let per_token = c.num_layers * m.cache_width() * 2;
        assert_eq!(model.kv_bytes_per_token(KvDType::F16), per_token);
        let paged = model.new_paged(4, 16, KvDType::F16).unwrap();
        assert_eq!(paged.bytes_per_token(), per_token);
        assert_eq!(paged.bytes_per_block(), 16 * per_token);
        // Expanded keys and values would take heads × (qk + v) per layer.
        let expanded = c.num_layers * c.num_heads * (m.qk_head_dim() + m.v_head_dim) * 2;
        assert!(per_token < expanded, "{name}: {per_token} vs {expanded}");
        eprintln!("{name}: {per_token} KV bytes/token in f16 (expanded K/V: {expanded})");
    }
}

/// A fixture's weights without one tensor: what a checkpoint that does
/// not match its config looks like to the loader.
struct Without(Box<dyn WeightSource>, &'static str);

impl WeightSource for Without {
    fn config(&self) -> &ModelConfig {
        self.0.config()
    }
    fn tensor(&self, name: &str) -> Result<WeightData> {
        if name == self.1 {
            return Err(mm_core::Error::Config(format!("no tensor {name}")));
        }
        self.0.tensor(name)
    }
    fn contains(&self, name: &str) -> bool {
        name != self.1 && self.0.contains(name)
    }
}

/// The first layer is a dense MLP, the others mixture-of-experts blocks
/// with 8 experts, the shared experts and (V3, GLM) the correction bias,
/// grouped as the config says; a missing expert or bias tensor is an error
/// naming it.
#[test]
fn moe_layers_load_with_their_routing() {
    for name in MLA {
        let model = load(name, &device(true));
        let m = model.config.moe.clone().unwrap();
        assert!(!m.is_sparse(0), "{name}");
        for l in 0..model.num_layers() {
            let ffn = &model.layer(l).unwrap().ffn;
            match ffn {
                Ffn::Dense(_) => assert_eq!(l, 0, "{name}"),
                Ffn::Moe(moe) => {
                    assert_eq!(moe.experts().len(), 8, "{name}");
                    assert!(moe.params().n_group > 1, "{name}");
                    // router + 8 × 3 experts + 3 shared.
                    assert_eq!(ffn.linears().len(), 1 + 24 + 3, "{name}");
                }
            }
        }
        let bias = name != "deepseek-v2";
        assert_eq!(m.correction_bias, bias, "{name}");
        let missing: &[&'static str] = if bias {
            &[
                "model.layers.1.mlp.experts.3.up_proj.weight",
                "model.layers.1.mlp.gate.e_score_correction_bias",
                "model.layers.1.mlp.shared_experts.down_proj.weight",
            ]
        } else {
            &[
                "model.layers.1.mlp.experts.3.up_proj.weight",
                "model.layers.1.mlp.shared_experts.down_proj.weight",
            ]
        };
        for &t in missing {
            let src = Without(open_source(&fixture(name)).unwrap(), t);
            let e = match load_model(&src, &device(true), &|_, _| {}) {
                Ok(_) => panic!("{name}: loaded without {t}"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(t), "{name}: {e}");
        }
    }
}
