//! MoE configs: the fields of Qwen3-MoE, Mixtral and GLM-4-MoE as
//! transformers 5 writes them (the tiny fixtures) and as released
//! checkpoints do (Qwen3-30B-A3B, GLM-4.5-Air), the dense/sparse layer
//! patterns, partial rotary, round trips through `to_hf_json`, and clear
//! errors naming the field.

use mm_formats::{Arch, GroupScore, ModelConfig, MoeScoring};
use serde_json::{json, Map, Value};

fn fixture(name: &str) -> ModelConfig {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(name)
        .join("config.json");
    ModelConfig::from_hf_json(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The head of Qwen3-30B-A3B's config.json (released keys).
const QWEN3_30B_A3B: &str = r#"{
  "architectures": ["Qwen3MoeForCausalLM"], "decoder_sparse_step": 1, "head_dim": 128,
  "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 6144,
  "max_position_embeddings": 40960, "mlp_only_layers": [], "model_type": "qwen3_moe",
  "moe_intermediate_size": 768, "norm_topk_prob": true, "num_attention_heads": 32,
  "num_experts": 128, "num_experts_per_tok": 8, "num_hidden_layers": 48,
  "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "tie_word_embeddings": false, "vocab_size": 151936
}"#;

/// GLM-4.5-Air's config.json (released keys: top-level partial rotary).
const GLM45_AIR: &str = r#"{
  "architectures": ["Glm4MoeForCausalLM"], "attention_bias": true, "first_k_dense_replace": 1,
  "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 10944,
  "max_position_embeddings": 131072, "model_type": "glm4_moe", "moe_intermediate_size": 1408,
  "n_group": 1, "n_routed_experts": 128, "n_shared_experts": 1, "norm_topk_prob": true,
  "num_attention_heads": 96, "num_experts_per_tok": 8, "num_hidden_layers": 46,
  "num_key_value_heads": 8, "num_nextn_predict_layers": 1, "partial_rotary_factor": 0.5,
  "rms_norm_eps": 1e-05, "rope_theta": 1000000, "routed_scaling_factor": 1.0,
  "tie_word_embeddings": false, "topk_group": 1, "use_qk_norm": false, "vocab_size": 151552
}"#;

fn with(base: &str, edit: impl FnOnce(&mut Map<String, Value>)) -> String {
    let mut v: Value = serde_json::from_str(base).unwrap();
    edit(v.as_object_mut().unwrap());
    v.to_string()
}

fn err(text: &str) -> String {
    match ModelConfig::from_hf_json(text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn round_trip(c: &ModelConfig) {
    let v = c.to_hf_json();
    let back = ModelConfig::from_hf_json(&v.to_string()).unwrap();
    assert_eq!(&back, c, "{}", serde_json::to_string_pretty(&v).unwrap());
}

#[test]
fn fixtures_parse_with_their_features() {
    let c = fixture("qwen3-moe");
    assert_eq!(c.arch, Arch::Qwen3Moe);
    assert!(c.qk_norm && c.rotary_dim.is_none());
    let m = c.moe.as_ref().unwrap();
    assert_eq!((m.num_experts, m.experts_per_token), (8, 2));
    assert_eq!(m.expert_intermediate_size, 32);
    assert!(!m.norm_topk_prob && m.scoring == MoeScoring::Softmax && !m.correction_bias);
    assert_eq!(m.sparse_layers, [false, true]);

    let m = fixture("qwen3-moe-renorm").moe.unwrap();
    assert!(m.norm_topk_prob);
    // decoder_sparse_step 2: layers 1, 3, ... are sparse.
    assert_eq!(m.sparse_layers, [false, true, false]);

    let c = fixture("mixtral");
    assert_eq!(c.arch, Arch::Mixtral);
    let m = c.moe.as_ref().unwrap();
    assert!(m.norm_topk_prob && m.sparse_layers.iter().all(|s| *s));
    assert_eq!(m.expert_intermediate_size, c.intermediate_size);

    let c = fixture("glm4-moe");
    assert_eq!(c.arch, Arch::Glm4Moe);
    assert!(c.qk_norm && c.attention_bias);
    assert_eq!((c.head_dim, c.rotary_dim), (16, Some(8)));
    let m = c.moe.as_ref().unwrap();
    assert_eq!(m.scoring, MoeScoring::Sigmoid);
    assert!(m.correction_bias && m.norm_topk_prob);
    assert_eq!(
        (m.n_group, m.topk_group, m.group_score),
        (4, 2, GroupScore::Top2Sum)
    );
    assert_eq!(m.routed_scaling_factor, 2.5);
    assert_eq!((m.shared_experts, m.shared_intermediate_size), (1, 32));
    assert_eq!(m.sparse_layers, [false, true]);

    let c = fixture("glm4-moe-plain");
    assert!(!c.qk_norm && !c.attention_bias);
    assert_eq!(c.rotary_dim, Some(4));
    let m = c.moe.unwrap();
    assert!(!m.norm_topk_prob);
    assert_eq!((m.shared_experts, m.shared_intermediate_size), (2, 64));
}

#[test]
fn released_configs_parse_and_round_trip() {
    let c = ModelConfig::from_hf_json(QWEN3_30B_A3B).unwrap();
    let m = c.moe.as_ref().unwrap();
    assert_eq!(
        (
            m.num_experts,
            m.experts_per_token,
            m.expert_intermediate_size
        ),
        (128, 8, 768)
    );
    assert!(m.sparse_layers.iter().all(|s| *s) && m.sparse_layers.len() == 48);
    round_trip(&c);
    let c = ModelConfig::from_hf_json(GLM45_AIR).unwrap();
    assert_eq!(c.rotary_dim, Some(64));
    let m = c.moe.as_ref().unwrap();
    assert!(!m.sparse_layers[0] && m.sparse_layers[1..].iter().all(|s| *s));
    round_trip(&c);
    // GLM's default partial rotary factor is 0.5.
    let c = ModelConfig::from_hf_json(&with(GLM45_AIR, |m| {
        m.remove("partial_rotary_factor");
    }))
    .unwrap();
    assert_eq!(c.rotary_dim, Some(64));
    // A whole-head factor is no partial rotary.
    let c = ModelConfig::from_hf_json(&with(GLM45_AIR, |m| {
        m.insert("partial_rotary_factor".into(), json!(1.0));
    }))
    .unwrap();
    assert_eq!(c.rotary_dim, None);
    round_trip(&c);
    for name in [
        "qwen3-moe",
        "qwen3-moe-renorm",
        "mixtral",
        "glm4-moe",
        "glm4-moe-plain",
    ] {
        round_trip(&fixture(name));
    }
}

#[test]
fn bad_moe_fields_are_errors_naming_them() {
    let cases: Vec<(String, &str)> = vec![
        (
            with(QWEN3_30B_A3B, |m| {
                m.remove("num_experts_per_tok");
            }),
            "missing field 'num_experts_per_tok'",
        ),
        (
            with(QWEN3_30B_A3B, |m| {
                m.remove("num_experts");
            }),
            "'num_experts'",
        ),
        (
            with(QWEN3_30B_A3B, |m| {
                m.insert("num_experts_per_tok".into(), json!(200));
            }),
            "'num_experts_per_tok' (200) exceeds",
        ),
        (
            with(QWEN3_30B_A3B, |m| {
                m.insert("mlp_only_layers".into(), json!([0, 48]));
            }),
            "'mlp_only_layers' names layer 48",
        ),
        (
            with(QWEN3_30B_A3B, |m| {
                m.insert("mlp_only_layers".into(), json!("all"));
            }),
            "'mlp_only_layers' must be a list of layer indices",
        ),
        (
            with(QWEN3_30B_A3B, |m| {
                m.insert("decoder_sparse_step".into(), json!(0));
            }),
            "'decoder_sparse_step' must be positive",
        ),
        (
            with(QWEN3_30B_A3B, |m| {
                m.insert("scoring_func".into(), json!("sigmoid"));
            }),
            "'scoring_func' must be 'softmax'",
        ),
        (
            with(GLM45_AIR, |m| {
                m.insert("n_group".into(), json!(3));
            }),
            "'n_group' (3) does not divide",
        ),
        (
            with(GLM45_AIR, |m| {
                m.insert("n_group".into(), json!(8));
                m.insert("topk_group".into(), json!(9));
            }),
            "'topk_group' (9) exceeds 'n_group' (8)",
        ),
        (
            with(GLM45_AIR, |m| {
                m.insert("n_group".into(), json!(64));
                m.insert("topk_group".into(), json!(2));
            }),
            "fewer than 'num_experts_per_tok'",
        ),
        (
            with(GLM45_AIR, |m| {
                m.insert("routed_scaling_factor".into(), json!(-1.0));
            }),
            "'routed_scaling_factor' must be positive",
        ),
        (
            with(GLM45_AIR, |m| {
                m.insert("partial_rotary_factor".into(), json!(1.5));
            }),
            "'partial_rotary_factor' must be a number in (0, 1]",
        ),
        (
            with(GLM45_AIR, |m| {
                m.insert("partial_rotary_factor".into(), json!(0.01));
            }),
            "'partial_rotary_factor' 0.01 gives 1 rotary dimensions",
        ),
        (
            with(GLM45_AIR, |m| {
                m.remove("moe_intermediate_size");
            }),
            "missing field 'moe_intermediate_size'",
        ),
    ];
    for (text, want) in cases {
        let e = err(&text);
        assert!(e.contains(want), "{e:?} lacks {want:?}");
    }
}
