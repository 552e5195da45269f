//! The mixture-of-experts and MLA fixtures as GGUF files made by llama.cpp's
//! converter (`scripts/make_gguf_fixtures.py`, listed in
//! `tests/fixtures/tiny-gguf.json`): Qwen3-MoE (`qwen3moe`), Mixtral
//! (`llama` with merged and with per-expert tensors), GLM-4.5 (`glm4moe`),
//! DeepSeek-V2, DeepSeek-V3 and GLM-4.7-Flash (`deepseek2`, split and
//! merged `kv_b`), bf16 and Q8_0.
//!
//! Each loads into the same model code as its HF fixture and matches
//! transformers: the bf16 files (the HF weights, exactly) against the
//! fixture's `logits.npy`, the Q8_0 files against transformers run on the
//! weights the file holds (dequantized by gguf-py). Tolerances are those of
//! `tiny_models.rs`: max |Δlogit| ≤ 1e-3 · max |logit| on the exact path
//! (every MLA form), 2e-3 on the default path, and the 16-token greedy
//! continuation identical. The bf16 files also give the HF fixture's own
//! logits on the exact path, bit for bit.

mod common;

use std::path::{Path, PathBuf};

use common::{device, greedy, ids, rel_err};
use mm_core::Device;
use mm_formats::{open_source, Arch, ModelConfig, RopeScaling};
use mm_models::{load_model, npy::read_npy, DecoderModel, MlaForm};
use serde_json::Value;

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny")
}

fn manifest() -> Value {
    let p = tiny().join("../tiny-gguf.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn files() -> Vec<Value> {
    manifest()["files"].as_array().unwrap().clone()
}

fn load(path: &Path, dev: &Device) -> DecoderModel {
    let src = open_source(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    load_model(src.as_ref(), dev, &|_, _| {}).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The reference of a manifest entry: (reference.json, logits).
fn reference(e: &Value) -> (Value, Vec<f32>) {
    let dir = tiny().join(e["reference"].as_str().unwrap());
    let (file, logits) = match e["reference_file"].as_str() {
        Some(f) => {
            let r: Value =
                serde_json::from_str(&std::fs::read_to_string(tiny().join(f)).unwrap()).unwrap();
            let l = tiny()
                .join(f)
                .with_file_name(r["logits_file"].as_str().unwrap());
            (r, l)
        }
        None => (
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap(),
            dir.join("logits.npy"),
        ),
    };
    (file, read_npy(&logits).unwrap().1)
}

fn prompt_logits(model: &DecoderModel, input: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache(256).unwrap();
    model
        .forward(input, &mut cache, true)
        .unwrap()
        .to_vec()
        .unwrap()
}

#[test]
fn gguf_moe_and_mla_match_transformers() {
    let files = files();
    assert!(files.len() >= 10, "{} files", files.len());
    for e in &files {
        let path = tiny().join(e["gguf"].as_str().unwrap());
        let name = e["gguf"].as_str().unwrap();
        let (r, want) = reference(e);
        let input = ids(&r, "input_ids");
        let (prompt, expect) = (ids(&r, "greedy_prompt"), ids(&r, "greedy_ids"));
        for (exact, tol) in [(true, 1e-3f32), (false, 2e-3)] {
            let mut model = load(&path, &device(exact));
            let forms: &[MlaForm] = match (model.config.mla.is_some(), exact) {
                (true, true) => &[MlaForm::Auto, MlaForm::Expanded, MlaForm::Absorbed],
                _ => &[MlaForm::Auto],
            };
            for &form in forms {
                model.set_mla_form(form);
                let err = rel_err(&prompt_logits(&model, &input), &want);
                eprintln!("{name} exact={exact} {form:?}: max |Δlogit| {err:.2e} · max |logit|");
                assert!(
                    err <= tol,
                    "{name} exact={exact} {form:?}: {err:.2e} > {tol:.0e}"
                );
                let got = greedy(&model, &prompt, expect.len());
                assert_eq!(got, expect, "{name} exact={exact} {form:?}: greedy differs");
            }
        }
    }
}

/// A bf16 GGUF holds the HF fixture's weights exactly: the exact path
/// gives the HF checkpoint's logits bit for bit (the deepseek2 files'
/// kv_b_proj rebuilt from attn_k_b/attn_v_b, Mixtral's q/k unpermuted).
#[test]
fn bf16_gguf_gives_the_hf_checkpoints_logits() {
    for e in files().iter().filter(|e| e["outtype"] == "bf16") {
        let name = e["gguf"].as_str().unwrap();
        let hf_dir = tiny().join(e["reference"].as_str().unwrap());
        let (r, _) = reference(e);
        let input = ids(&r, "input_ids");
        let dev = device(true);
        let g = prompt_logits(&load(&tiny().join(name), &dev), &input);
        let h = prompt_logits(&load(&hf_dir, &dev), &input);
        let same = g.iter().zip(&h).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{name}: {:.2e} from the HF logits", rel_err(&g, &h));
    }
}

/// The config read from GGUF metadata is the HF config's where GGUF says
/// the same thing: dimensions, RoPE, experts and routing, the MLA shape.
#[test]
fn gguf_config_matches_the_hf_config() {
    for e in files().iter().filter(|e| e["outtype"] == "bf16") {
        let name = e["gguf"].as_str().unwrap();
        let g = open_source(&tiny().join(name)).unwrap().config().clone();
        let h = open_source(&tiny().join(e["reference"].as_str().unwrap()))
            .unwrap()
            .config()
            .clone();
        // GLM-4.7-Flash is DeepSeek-V3's model in a deepseek2 file.
        let arch = match h.arch {
            Arch::Glm4MoeLite => Arch::DeepseekV3,
            a => a,
        };
        assert_eq!(g.arch, arch, "{name}");
        let dims = |c: &ModelConfig| {
            (
                c.hidden_size,
                c.intermediate_size,
                c.num_layers,
                c.num_heads,
                c.head_dim,
                c.vocab_size,
                c.rotary_dim,
                c.qk_norm,
                c.attention_bias,
                c.tie_word_embeddings,
            )
        };
        assert_eq!(dims(&g), dims(&h), "{name}");
        assert_eq!(
            (g.rms_norm_eps, g.rope_theta),
            (h.rms_norm_eps, h.rope_theta)
        );
        // YaRN's mscale_all_dim travels as 0.1 · it in an f32.
        let yarn = |c: &ModelConfig| match c.rope_scaling {
            Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                ..
            }) => Some((
                (
                    factor,
                    original_max_position_embeddings,
                    beta_fast,
                    beta_slow,
                ),
                [mscale, mscale_all_dim].map(|m| m.map(|m| (m * 1e5).round())),
            )),
            _ => None,
        };
        match yarn(&h) {
            Some(y) => assert_eq!(yarn(&g), Some(y), "{name}"),
            None => assert_eq!(g.rope_scaling, h.rope_scaling, "{name}"),
        }
        assert_eq!(g.moe, h.moe, "{name}");
        assert_eq!(g.mla, h.mla, "{name}");
        if g.mla.is_none() {
            assert_eq!(g.num_kv_heads, h.num_kv_heads, "{name}");
        }
    }
}
