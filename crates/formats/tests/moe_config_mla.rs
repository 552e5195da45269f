//! MoE configs of the DeepSeek family (DeepSeek-V2, DeepSeek-V3,
//! GLM-4.7-Flash): the tiny fixtures as transformers 5 writes them,
//! released-style configs, transformers' defaults for absent fields, round
//! trips through `to_hf_json`, and errors naming the field.

use mm_formats::{Arch, GroupScore, ModelConfig, MoeScoring};
use serde_json::{json, Value};

fn fixture(name: &str) -> ModelConfig {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(name)
        .join("config.json");
    ModelConfig::from_hf_json(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn parse(v: &Value) -> ModelConfig {
    ModelConfig::from_hf_json(&v.to_string()).unwrap_or_else(|e| panic!("{e}\n{v}"))
}

fn err(v: &Value) -> String {
    match ModelConfig::from_hf_json(&v.to_string()) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn round_trip(c: &ModelConfig) {
    let v = c.to_hf_json();
    assert_eq!(&parse(&v), c, "{v}");
}

/// DeepSeek-V2-Lite's MoE and attention fields (released keys), 4 layers.
fn v2_lite() -> Value {
    json!({
        "architectures": ["DeepseekV2ForCausalLM"], "hidden_size": 2048,
        "intermediate_size": 10944, "kv_lora_rank": 512, "max_position_embeddings": 163840,
        "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1,
        "n_routed_experts": 64, "n_shared_experts": 2, "norm_topk_prob": false,
        "num_attention_heads": 16, "num_experts_per_tok": 6, "num_hidden_layers": 4,
        "num_key_value_heads": 16, "q_lora_rank": null, "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64, "routed_scaling_factor": 1.0, "scoring_func": "softmax",
        "first_k_dense_replace": 1, "topk_group": 1, "topk_method": "greedy",
        "v_head_dim": 128, "vocab_size": 102400, "rope_theta": 10000
    })
}

/// DeepSeek-V3's MoE fields (released keys), 5 layers.
fn v3() -> Value {
    json!({
        "architectures": ["DeepseekV3ForCausalLM"], "hidden_size": 7168,
        "intermediate_size": 18432, "kv_lora_rank": 512, "max_position_embeddings": 163840,
        "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8,
        "n_routed_experts": 256, "n_shared_experts": 1, "norm_topk_prob": true,
        "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 5,
        "num_key_value_heads": 128, "q_lora_rank": 1536, "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid",
        "first_k_dense_replace": 3, "topk_group": 4, "topk_method": "noaux_tc",
        "v_head_dim": 128, "vocab_size": 129280, "rope_theta": 10000
    })
}

#[test]
fn fixtures_parse_with_their_routing() {
    let c = fixture("deepseek-v2");
    assert_eq!(c.arch, Arch::DeepseekV2);
    let m = c.moe.as_ref().unwrap();
    assert_eq!((m.num_experts, m.experts_per_token), (8, 2));
    assert_eq!(
        (m.n_group, m.topk_group, m.group_score),
        (4, 2, GroupScore::Max)
    );
    assert_eq!((m.scoring, m.correction_bias), (MoeScoring::Softmax, false));
    assert!(!m.norm_topk_prob);
    assert_eq!(m.routed_scaling_factor, 1.5);
    assert_eq!((m.shared_experts, m.shared_intermediate_size), (2, 32));
    assert_eq!(m.sparse_layers, [false, true]);
    round_trip(&c);

    let c = fixture("deepseek-v3-yarn");
    let m = c.moe.as_ref().unwrap();
    assert_eq!(
        (m.n_group, m.topk_group, m.group_score),
        (4, 2, GroupScore::Top2Sum)
    );
    assert_eq!((m.scoring, m.correction_bias), (MoeScoring::Sigmoid, true));
    assert!(m.norm_topk_prob);
    assert_eq!(m.routed_scaling_factor, 2.5);
    assert_eq!(m.shared_experts, 1);
    assert_eq!(m.sparse_layers, [false, true, true]);
    round_trip(&c);

    let c = fixture("glm4-moe-lite");
    assert_eq!(c.arch, Arch::Glm4MoeLite);
    let m = c.moe.as_ref().unwrap();
    assert_eq!((m.n_group, m.topk_group), (2, 1));
    assert_eq!((m.scoring, m.correction_bias), (MoeScoring::Sigmoid, true));
    assert_eq!(m.routed_scaling_factor, 1.8);
    assert_eq!(m.sparse_layers, [false, true]);
    round_trip(&c);
}

#[test]
fn released_configs_and_defaults() {
    let c = parse(&v2_lite());
    let m = c.moe.as_ref().unwrap();
    assert_eq!((m.num_experts, m.experts_per_token, m.n_group), (64, 6, 1));
    assert_eq!((m.shared_experts, m.shared_intermediate_size), (2, 2816));
    assert_eq!(m.sparse_layers, [false, true, true, true]);
    round_trip(&c);

    let c = parse(&v3());
    let m = c.moe.as_ref().unwrap();
    assert_eq!((m.num_experts, m.experts_per_token), (256, 8));
    assert_eq!((m.n_group, m.topk_group), (8, 4));
    assert_eq!(m.sparse_layers, [false, false, false, true, true]);
    round_trip(&c);

    // transformers' V3 defaults: 256 experts top-8, 8 groups / 4, scaling
    // 2.5, renormalised, 3 dense layers.
    let mut v = v3();
    for k in [
        "n_group",
        "topk_group",
        "n_routed_experts",
        "num_experts_per_tok",
        "routed_scaling_factor",
        "norm_topk_prob",
        "first_k_dense_replace",
        "topk_method",
        "scoring_func",
        "moe_layer_freq",
    ] {
        v.as_object_mut().unwrap().remove(k);
    }
    assert_eq!(parse(&v).moe, c.moe);

    // V2's defaults: greedy, no dense layer.
    let mut v = v2_lite();
    for k in [
        "topk_method",
        "n_group",
        "topk_group",
        "first_k_dense_replace",
    ] {
        v.as_object_mut().unwrap().remove(k);
    }
    let m = parse(&v).moe.unwrap();
    assert_eq!((m.n_group, m.sparse_layers[0]), (1, true));

    // GLM-4.7-Flash without mlp_layer_types: the first layer dense.
    let mut v = v3();
    v["architectures"] = json!(["Glm4MoeLiteForCausalLM"]);
    for k in ["first_k_dense_replace", "topk_method"] {
        v.as_object_mut().unwrap().remove(k);
    }
    let c = parse(&v);
    assert_eq!(
        c.moe.as_ref().unwrap().sparse_layers,
        [false, true, true, true, true]
    );
    round_trip(&c);
    // ... and with first_k_dense_replace saying the same.
    v["first_k_dense_replace"] = json!(1);
    assert_eq!(parse(&v).moe, c.moe);

    // Every layer dense: no MoE config, and it stays so.
    let mut v = v2_lite();
    v["first_k_dense_replace"] = json!(4);
    v.as_object_mut().unwrap().remove("num_experts_per_tok");
    let c = parse(&v);
    assert!(c.moe.is_none());
    round_trip(&c);
}

#[test]
fn bad_fields_are_named() {
    let cases: Vec<(Value, &str)> = vec![
        (json!({"topk_method": "noaux_tc"}), "topk_method"),
        (json!({"norm_topk_prob": true}), "norm_topk_prob"),
        (json!({"moe_layer_freq": 2}), "moe_layer_freq"),
        (json!({"scoring_func": "sigmoid"}), "scoring_func"),
        (json!({"num_experts_per_tok": null}), "num_experts_per_tok"),
        (
            json!({"topk_method": "group_limited_greedy", "n_group": 3}),
            "n_group",
        ),
        (
            json!({"topk_method": "group_limited_greedy", "n_group": 4, "topk_group": null}),
            "topk_group",
        ),
    ];
    for (edit, field) in cases {
        let mut v = v2_lite();
        for (k, x) in edit.as_object().unwrap() {
            v[k] = x.clone();
        }
        let e = err(&v);
        assert!(e.contains(field), "{edit}: {e}");
    }
    let cases: Vec<(Value, &str)> = vec![
        (json!({"topk_method": "greedy"}), "topk_method"),
        (json!({"scoring_func": "softmax"}), "scoring_func"),
        (json!({"n_group": 7}), "n_group"),
        (json!({"topk_group": 9}), "topk_group"),
        (
            json!({"routed_scaling_factor": 0.0}),
            "routed_scaling_factor",
        ),
    ];
    for (edit, field) in cases {
        let mut v = v3();
        for (k, x) in edit.as_object().unwrap() {
            v[k] = x.clone();
        }
        let e = err(&v);
        assert!(e.contains(field), "{edit}: {e}");
    }
    let mut v = v3();
    v["architectures"] = json!(["Glm4MoeLiteForCausalLM"]);
    v["mlp_layer_types"] = json!(["dense", "sparse"]);
    assert!(err(&v).contains("mlp_layer_types"));
    v["mlp_layer_types"] = json!(["dense", "sparse", "moe", "sparse", "sparse"]);
    assert!(err(&v).contains("mlp_layer_types"));
    v["mlp_layer_types"] = json!(["dense", "sparse", "sparse", "sparse", "sparse"]);
    // first_k_dense_replace 3 says otherwise.
    assert!(err(&v).contains("first_k_dense_replace"));
}
