//! GGUF files of mixture-of-experts and MLA models under HF names: the
//! fixtures llama.cpp's converter made (`scripts/make_gguf_fixtures.py`,
//! `tests/fixtures/tiny-gguf.json`) and copies of them with a key or a
//! tensor removed. Logits against transformers are in
//! `crates/models/tests/gguf_moe.rs`.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use mm_core::{HostBytes, WeightData, WeightFormat as F};
use mm_formats::{open_source, GgufFile, WeightSource};

fn tiny(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(rel)
}

fn open(rel: &str) -> Box<dyn WeightSource> {
    open_source(&tiny(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The byte window `w` is of its file's map: (offset, len).
fn window(w: &WeightData) -> (usize, usize) {
    match &w.bytes {
        HostBytes::Mapped { offset, len, .. } => (*offset, *len),
        HostBytes::Owned(_) => panic!("expected a window of the file's map"),
    }
}

/// Quantized experts stay in their format: each is a window of the merged
/// tensor's bytes (expert `e` at `e` slabs), not a dequantized copy.
#[test]
fn quantized_experts_are_windows_of_the_merged_tensor() {
    let rel = "qwen3-moe-sparse/gguf/model.q8_0.gguf";
    let src = open(rel);
    let file = GgufFile::open(&tiny(rel)).unwrap();
    for l in 0..2 {
        for (proj, g, shape) in [
            ("gate_proj", "gate", [32, 64]),
            ("up_proj", "up", [32, 64]),
            ("down_proj", "down", [64, 32]),
        ] {
            let merged = file
                .tensor_info(&format!("blk.{l}.ffn_{g}_exps.weight"))
                .unwrap();
            assert_eq!(merged.format, F::Q8_0);
            let slab = merged.size / 8;
            for e in 0..8 {
                let name = format!("model.layers.{l}.mlp.experts.{e}.{proj}.weight");
                assert!(src.contains(&name), "{name}");
                let w = src.tensor(&name).unwrap();
                assert_eq!(
                    (w.format, w.shape.as_slice()),
                    (F::Q8_0, &shape[..]),
                    "{name}"
                );
                assert_eq!(window(&w), (merged.offset + e * slab, slab), "{name}");
            }
        }
    }
    assert!(!src.contains("model.layers.0.mlp.experts.8.up_proj.weight"));
    let e = err_text(src.tensor("model.layers.0.mlp.experts.8.up_proj.weight"));
    assert!(e.contains("expert 8") && e.contains("holding 8"), "{e}");
}

/// Fused gate/up experts (`ffn_gate_up_exps`, per expert its gate rows then
/// its up rows) are windows too: half an expert's slab each, in Q8_0.
#[test]
fn fused_gate_up_experts_are_half_slabs() {
    let rel = "deepseek-v2/gguf/model.q8_0.fused.gguf";
    let src = open(rel);
    let plain = open("deepseek-v2/gguf/model.q8_0.gguf");
    let file = GgufFile::open(&tiny(rel)).unwrap();
    let fused = file.tensor_info("blk.1.ffn_gate_up_exps.weight").unwrap();
    assert_eq!(
        (fused.format, fused.shape.as_slice()),
        (F::Q8_0, &[8, 32, 64][..])
    );
    assert!(!file.contains("blk.1.ffn_gate_exps.weight"));
    let slab = fused.size / 8;
    for e in 0..8 {
        for (i, proj) in ["gate_proj", "up_proj"].into_iter().enumerate() {
            let name = format!("model.layers.1.mlp.experts.{e}.{proj}.weight");
            let w = src.tensor(&name).unwrap();
            assert_eq!((w.format, w.shape.as_slice()), (F::Q8_0, &[16, 64][..]));
            let at = fused.offset + e * slab + i * slab / 2;
            assert_eq!(window(&w), (at, slab / 2), "{name}");
            assert_eq!(&*w.bytes, &*plain.tensor(&name).unwrap().bytes, "{name}");
        }
    }
}

/// Mixtral's per-expert layout (older converters) gives the merged
/// layout's experts byte for byte, under Mixtral's names.
#[test]
fn per_expert_mixtral_equals_merged() {
    let merged = open("mixtral/gguf/model.bf16.gguf");
    let single = open("mixtral/gguf/model.per-expert.bf16.gguf");
    let names: Vec<_> = merged.describe();
    assert_eq!(names, single.describe());
    let experts: Vec<_> = names.iter().filter(|n| n.0.contains(".experts.")).collect();
    assert_eq!(experts.len(), 2 * 8 * 3);
    for (n, fmt, shape) in experts {
        assert!(
            n.contains("block_sparse_moe.experts.") && fmt == "BF16",
            "{n}"
        );
        let (a, b) = (merged.tensor(n).unwrap(), single.tensor(n).unwrap());
        assert_eq!((&a.shape, &*a.bytes), (shape, &*b.bytes), "{n}");
    }
    assert!(merged.contains("model.layers.1.block_sparse_moe.gate.weight"));
}

/// MLA's kv_b_proj is the same from the split attn_k_b/attn_v_b as from a
/// file with attn_kv_b; it keeps bf16, and becomes f32 when the halves
/// differ in format (Q8_0 file: k_b F16, v_b Q8_0).
#[test]
fn kv_b_from_split_and_merged_tensors() {
    let split = open("deepseek-v2/gguf/model.bf16.gguf");
    let merged = open("deepseek-v2/gguf/model.kv-b.bf16.gguf");
    for l in 0..2 {
        let n = format!("model.layers.{l}.self_attn.kv_b_proj.weight");
        let (a, b) = (split.tensor(&n).unwrap(), merged.tensor(&n).unwrap());
        assert_eq!((a.format, &a.shape), (F::BF16, &vec![4 * (16 + 16), 32]));
        assert_eq!((&a.shape, &*a.bytes), (&b.shape, &*b.bytes), "{n}");
    }
    let q = open("deepseek-v2/gguf/model.q8_0.gguf");
    let file = GgufFile::open(&tiny("deepseek-v2/gguf/model.q8_0.gguf")).unwrap();
    let fmt = |n: &str| file.tensor_info(n).unwrap().format;
    assert_eq!(
        (fmt("blk.1.attn_k_b.weight"), fmt("blk.1.attn_v_b.weight")),
        (F::F16, F::Q8_0)
    );
    let w = q
        .tensor("model.layers.1.self_attn.kv_b_proj.weight")
        .unwrap();
    assert_eq!((w.format, w.shape.as_slice()), (F::F32, &[128, 32][..]));
}

/// describe() lists what tensor() gives: experts one by one, kv_b_proj
/// once per layer, HF names throughout; nothing of the merged or split
/// tensors under their GGUF names.
#[test]
fn describe_lists_loadable_hf_names() {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny("../tiny-gguf.json")).unwrap()).unwrap();
    for e in m["files"].as_array().unwrap() {
        let rel = e["gguf"].as_str().unwrap();
        let src = open(rel);
        let d = src.describe();
        for (n, fmt, shape) in &d {
            assert!(
                n.starts_with("model.") || n == "lm_head.weight",
                "{rel}: {n}"
            );
            assert!(src.contains(n), "{rel}: {n}");
            let w = src.tensor(n).unwrap_or_else(|e| panic!("{rel}: {n}: {e}"));
            assert_eq!(
                (w.format.name(), &w.shape),
                (fmt.as_str(), shape),
                "{rel}: {n}"
            );
        }
        let c = src.config();
        let moe = c.moe.as_ref().unwrap();
        let sparse = moe.sparse_layers.iter().filter(|s| **s).count();
        let experts = d.iter().filter(|x| x.0.contains(".experts.")).count();
        assert_eq!(experts, sparse * moe.num_experts * 3, "{rel}");
        let kv_b = d
            .iter()
            .filter(|x| x.0.ends_with("kv_b_proj.weight"))
            .count();
        assert_eq!(
            kv_b,
            if c.mla.is_some() { c.num_layers } else { 0 },
            "{rel}"
        );
    }
}

/// A GGUF model's config written as a `config.json` (what `quantize`
/// stores beside the weights it takes from a GGUF) reads back the same.
#[test]
fn gguf_configs_round_trip_through_config_json() {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny("../tiny-gguf.json")).unwrap()).unwrap();
    for e in m["files"].as_array().unwrap() {
        let rel = e["gguf"].as_str().unwrap();
        let c = open(rel).config().clone();
        let v = c.to_hf_json();
        let back = mm_formats::ModelConfig::from_hf_json(&v.to_string())
            .unwrap_or_else(|err| panic!("{rel}: {err}\n{v}"));
        assert_eq!(back, c, "{rel}: {v}");
    }
}

/// A copy of fixture `rel` without the metadata keys and tensors `drop`
/// says to drop, plus extra keys.
fn edited(
    dir: &TempDir,
    rel: &str,
    drop: &dyn Fn(&str) -> bool,
    extra: &[(&str, mm_formats::GgufValue)],
) -> PathBuf {
    let f = GgufFile::open(&tiny(rel)).unwrap();
    let mut b = GgufBuilder::new();
    for (k, v) in &f.metadata {
        if !drop(k) && !extra.iter().any(|(e, _)| e == k) {
            b = b.kv(k, v.clone());
        }
    }
    for (k, v) in extra {
        b = b.kv(k, v.clone());
    }
    for t in &f.tensors {
        if !drop(&t.name) {
            let w = f.tensor(&t.name).unwrap();
            b = b.tensor(&t.name, &t.shape, t.format, w.bytes.to_vec());
        }
    }
    let name = rel.replace('/', "-");
    dir.write(&name, &b.build())
}

fn open_err(p: &Path) -> String {
    match open_source(p) {
        Ok(_) => panic!("{}: expected an error", p.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_keys_are_errors_naming_them() {
    let dir = TempDir::new("moekeys");
    use mm_formats::GgufValue as V;
    let v3 = "deepseek-v3-yarn-interleaved/gguf/model.bf16.gguf";
    for key in [
        "deepseek2.attention.kv_lora_rank",
        "deepseek2.expert_count",
        "deepseek2.expert_used_count",
        "deepseek2.expert_shared_count",
        "deepseek2.expert_feed_forward_length",
        "deepseek2.rope.dimension_count",
        "deepseek2.rope.scaling.factor",
    ] {
        let e = open_err(&edited(&dir, v3, &|k| k == key, &[]));
        assert!(e.contains(&format!("'{key}' is missing")), "{key}: {e}");
    }
    let q3 = "qwen3-moe-sparse/gguf/model.bf16.gguf";
    let e = open_err(&edited(
        &dir,
        q3,
        &|k| k == "qwen3moe.expert_used_count",
        &[],
    ));
    assert!(e.contains("'qwen3moe.expert_used_count' is missing"), "{e}");
    // Values the file cannot mean.
    let e = open_err(&edited(
        &dir,
        "glm4-moe/gguf/model.bf16.gguf",
        &|_| false,
        &[("glm4moe.leading_dense_block_count", V::U32(2))],
    ));
    assert!(
        e.contains("leading_dense_block_count' = 2 makes layer 1 dense")
            && e.contains("'blk.1.ffn_gate_inp.weight'"),
        "{e}"
    );
    let e = open_err(&edited(
        &dir,
        q3,
        &|_| false,
        &[("qwen3moe.expert_gating_func", V::U32(2))],
    ));
    assert!(e.contains("must be softmax (1) for qwen3moe"), "{e}");
    let e = open_err(&edited(
        &dir,
        v3,
        &|_| false,
        &[("deepseek2.rope.scaling.yarn_ext_factor", V::F32(0.5))],
    ));
    assert!(e.contains("yarn_ext_factor' = 0.5 is not supported"), "{e}");
    let e = open_err(&edited(
        &dir,
        "deepseek-v2/gguf/model.bf16.gguf",
        &|_| false,
        &[("deepseek2.expert_weights_norm", V::Bool(true))],
    ));
    assert!(
        e.contains("expert_weights_norm' = true with softmax"),
        "{e}"
    );
}

/// Optional keys take llama.cpp's defaults: no YaRN log multiplier is
/// mscale(factor, 1) on cos/sin and in the softmax scale (transformers'
/// `mscale_all_dim` 1 without `mscale`); a weights scale of 0 is none; a
/// `deepseek2` file without a gating function routes by softmax unless it
/// has correction biases.
#[test]
fn optional_keys_take_llama_cpp_defaults() {
    use mm_formats::{GgufValue as V, MoeScoring, RopeScaling};
    let dir = TempDir::new("moedefaults");
    let v3 = "deepseek-v3-yarn-interleaved/gguf/model.bf16.gguf";
    let p = edited(
        &dir,
        v3,
        &|k| k == "deepseek2.rope.scaling.yarn_log_multiplier",
        &[("deepseek2.expert_weights_scale", V::F32(0.0))],
    );
    let c = open_source(&p).unwrap().config().clone();
    match c.rope_scaling {
        Some(RopeScaling::Yarn {
            factor,
            mscale,
            mscale_all_dim,
            attention_factor,
            ..
        }) => assert_eq!(
            (factor, mscale, mscale_all_dim, attention_factor),
            (4.0, None, Some(1.0), None)
        ),
        s => panic!("{s:?}"),
    }
    let m = c.moe.unwrap();
    assert_eq!(
        (m.routed_scaling_factor, m.scoring),
        (1.0, MoeScoring::Sigmoid)
    );
    let c = open(v3).config().clone();
    match c.rope_scaling {
        Some(RopeScaling::Yarn {
            mscale: Some(a),
            mscale_all_dim: Some(b),
            ..
        }) => assert!(a == b && (a - 0.707).abs() < 1e-6, "{a} {b}"),
        s => panic!("{s:?}"),
    }
    // Without its correction biases (and renormalisation), a V3 file reads
    // as softmax-routed (DeepSeek-V2), unless the gating function says
    // sigmoid.
    let no_bias = |n: &str| n.ends_with("exp_probs_b.bias") || n == "deepseek2.expert_weights_norm";
    let c = open_source(&edited(&dir, v3, &no_bias, &[]))
        .unwrap()
        .config()
        .clone();
    assert_eq!(
        (c.arch, c.moe.unwrap().scoring),
        (mm_formats::Arch::DeepseekV2, MoeScoring::Softmax)
    );
    let p = edited(
        &dir,
        v3,
        &no_bias,
        &[("deepseek2.expert_gating_func", V::U32(2))],
    );
    let src = open_source(&p).unwrap();
    assert_eq!(src.config().arch, mm_formats::Arch::DeepseekV3);
    let e = err_text(src.tensor("model.layers.1.mlp.gate.e_score_correction_bias"));
    assert!(e.contains("'blk.1.exp_probs_b.bias' is missing"), "{e}");
}

#[test]
fn missing_tensors_are_errors_naming_them() {
    let dir = TempDir::new("moetensors");
    for (rel, gone, hf) in [
        (
            "qwen3-moe-sparse/gguf/model.q8_0.gguf",
            "blk.1.ffn_up_exps.weight",
            "model.layers.1.mlp.experts.3.up_proj.weight",
        ),
        (
            "glm4-moe/gguf/model.bf16.gguf",
            "blk.1.exp_probs_b.bias",
            "model.layers.1.mlp.gate.e_score_correction_bias",
        ),
        (
            "glm4-moe/gguf/model.bf16.gguf",
            "blk.1.ffn_down_shexp.weight",
            "model.layers.1.mlp.shared_experts.down_proj.weight",
        ),
        (
            "deepseek-v2/gguf/model.bf16.gguf",
            "blk.0.attn_v_b.weight",
            "model.layers.0.self_attn.kv_b_proj.weight",
        ),
        (
            "deepseek-v2/gguf/model.kv-b.bf16.gguf",
            "blk.1.attn_kv_b.weight",
            "model.layers.1.self_attn.kv_b_proj.weight",
        ),
        (
            "glm4-moe-lite/gguf/model.bf16.gguf",
            "blk.1.attn_q_a_norm.weight",
            "model.layers.1.self_attn.q_a_layernorm.weight",
        ),
    ] {
        let p = edited(&dir, rel, &|n| n == gone, &[]);
        let src = open_source(&p).unwrap_or_else(|e| panic!("{rel} without {gone}: {e}"));
        assert!(!src.contains(hf), "{rel}: {hf}");
        let e = err_text(src.tensor(hf));
        assert!(
            e.contains(&format!("'{gone}'")) && e.contains("is missing") && e.contains(hf),
            "{rel}: {e}"
        );
    }
}
