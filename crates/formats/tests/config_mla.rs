//! Multi-head latent attention configs (DeepSeek-V2/V3, GLM-4.7-Flash) and
//! YaRN RoPE scaling: parsed as transformers 5 reads them, written back by
//! `to_hf_json`, bad values refused with the field's name.

use mm_formats::{Arch, MlaConfig, ModelConfig, RopeScaling};
use serde_json::{json, Value};

/// GLM-4.7-Flash's shape (MoE fields included; they are not read here).
fn glm47_flash() -> Value {
    json!({
        "architectures": ["Glm4MoeLiteForCausalLM"],
        "attention_bias": false,
        "eos_token_id": [154820, 154827, 154829],
        "first_k_dense_replace": 1,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "intermediate_size": 10240,
        "kv_lora_rank": 512,
        "max_position_embeddings": 202752,
        "model_type": "glm4_moe_lite",
        "moe_intermediate_size": 1536,
        "n_group": 1,
        "n_routed_experts": 64,
        "n_shared_experts": 1,
        "norm_topk_prob": true,
        "num_attention_heads": 20,
        "num_experts_per_tok": 4,
        "num_hidden_layers": 47,
        "num_key_value_heads": 20,
        "q_lora_rank": 768,
        "qk_nope_head_dim": 192,
        "qk_rope_head_dim": 64,
        "rms_norm_eps": 1e-05,
        "rope_interleave": true,
        "rope_scaling": null,
        "rope_theta": 1000000,
        "routed_scaling_factor": 1.8,
        "tie_word_embeddings": false,
        "topk_group": 1,
        "v_head_dim": 256,
        "vocab_size": 154880
    })
}

/// DeepSeek-V3's attention and RoPE fields (legacy `rope_scaling` with
/// `type`), scaled down elsewhere.
fn deepseek_v3() -> Value {
    json!({
        "architectures": ["DeepseekV3ForCausalLM"],
        "hidden_size": 7168,
        "intermediate_size": 18432,
        "kv_lora_rank": 512,
        "max_position_embeddings": 163840,
        "num_attention_heads": 128,
        "num_hidden_layers": 61,
        "q_lora_rank": 1536,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "rope_theta": 10000,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                         "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                         "type": "yarn"},
        "vocab_size": 129280
    })
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

#[test]
fn glm47_flash_shape() {
    let c = parse(&glm47_flash());
    assert_eq!(c.arch, Arch::Glm4MoeLite);
    let m = c.mla.unwrap();
    assert_eq!(
        m,
        MlaConfig {
            q_lora_rank: Some(768),
            kv_lora_rank: 512,
            qk_nope_head_dim: 192,
            qk_rope_head_dim: 64,
            v_head_dim: 256,
            rope_interleave: true,
        }
    );
    assert_eq!((m.qk_head_dim(), m.cache_width()), (256, 576));
    // RoPE rotates the qk_rope_head_dim values of each head.
    assert_eq!(c.head_dim, 64);
    assert_eq!(c.rope_scaling, None);
    round_trip(&c);
}

#[test]
fn deepseek_v3_yarn() {
    let c = parse(&deepseek_v3());
    assert_eq!(c.arch, Arch::DeepseekV3);
    assert_eq!(
        c.rope_scaling,
        Some(RopeScaling::Yarn {
            factor: 40.0,
            original_max_position_embeddings: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: Some(1.0),
            mscale_all_dim: Some(1.0),
            attention_factor: None,
            truncate: true,
        })
    );
    assert!(c.mla.unwrap().rope_interleave, "V3's default");
    round_trip(&c);
    // The model_type alone names the architecture too.
    let mut v = deepseek_v3();
    v.as_object_mut().unwrap().remove("architectures");
    v["model_type"] = json!("deepseek_v3");
    assert_eq!(parse(&v).arch, Arch::DeepseekV3);
}

#[test]
fn deepseek_v2_without_q_lora() {
    let mut v = deepseek_v3();
    v["architectures"] = json!(["DeepseekV2ForCausalLM"]);
    v["q_lora_rank"] = Value::Null;
    v["rope_interleave"] = json!(false);
    // V2 has no default top-k (V3's config has 8): its MoE layers need one.
    v["num_experts_per_tok"] = json!(6);
    let c = parse(&v);
    assert_eq!(c.arch, Arch::DeepseekV2);
    let m = c.mla.unwrap();
    assert_eq!(m.q_lora_rank, None);
    // DeepSeek-V2 always rotates interleaved pairs (complex numbers).
    assert!(m.rope_interleave);
    round_trip(&c);
    // GLM with the rotate-half layout.
    let mut v = glm47_flash();
    v["rope_interleave"] = json!(false);
    let c = parse(&v);
    assert!(!c.mla.unwrap().rope_interleave);
    round_trip(&c);
}

#[test]
fn yarn_with_every_field_round_trips() {
    let mut v = glm47_flash();
    v["rope_parameters"] = json!({"rope_type": "yarn", "rope_theta": 50000.0, "factor": 4.0,
        "original_max_position_embeddings": 64, "beta_fast": 16.0, "beta_slow": 2.0,
        "mscale": 0.707, "mscale_all_dim": 0.5, "attention_factor": 1.25, "truncate": false});
    let c = parse(&v);
    assert_eq!(c.rope_theta, 50000.0);
    assert!(matches!(
        c.rope_scaling,
        Some(RopeScaling::Yarn { attention_factor: Some(a), truncate: false, .. }) if a == 1.25
    ));
    round_trip(&c);
}

#[test]
fn bad_mla_fields_are_named() {
    for (key, val, want) in [
        ("kv_lora_rank", Value::Null, "missing field 'kv_lora_rank'"),
        ("kv_lora_rank", json!(0), "'kv_lora_rank' must be positive"),
        (
            "qk_rope_head_dim",
            json!(63),
            "'qk_rope_head_dim' must be even",
        ),
        (
            "v_head_dim",
            json!("x"),
            "'v_head_dim' must be a non-negative integer",
        ),
        (
            "q_lora_rank",
            json!(0),
            "'q_lora_rank' must be positive or null",
        ),
        (
            "rope_interleave",
            json!(1),
            "'rope_interleave' must be true or false",
        ),
    ] {
        let mut v = glm47_flash();
        v[key] = val;
        let e = err(&v);
        assert!(e.contains(want), "{key}: {e}");
    }
    let mut v = deepseek_v3();
    v["rope_scaling"].as_object_mut().unwrap().remove("factor");
    let e = err(&v);
    assert!(e.contains("rope_scaling.factor"), "{e}");
    v["rope_scaling"]["factor"] = json!(-2.0);
    let e = err(&v);
    assert!(e.contains("invalid yarn RoPE scaling"), "{e}");
    // MLA fields on an architecture without MLA are ignored, as
    // transformers ignores unknown keys; a hand-built config is checked.
    let mut c = parse(&glm47_flash());
    c.mla = None;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("needs multi-head latent"));
}
