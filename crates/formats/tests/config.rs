//! `ModelConfig` from HF config.json and from GGUF metadata.

mod common;

use common::*;
use mm_core::{Error, WeightFormat as F};
use mm_formats::{Arch, GgufFile, GgufValue as V, ModelConfig, RopeScaling};

/// SmolLM2-135M-Instruct's config.json.
const SMOLLM2: &str = r#"{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "head_dim": 64,
  "hidden_act": "silu",
  "hidden_size": 576,
  "initializer_range": 0.041666666666666664,
  "intermediate_size": 1536,
  "is_llama_config": true,
  "max_position_embeddings": 8192,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 9,
  "num_hidden_layers": 30,
  "num_key_value_heads": 3,
  "pad_token_id": 2,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_interleaved": false,
  "rope_scaling": null,
  "rope_theta": 100000,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.42.3",
  "use_cache": true,
  "vocab_size": 49152
}"#;

/// Qwen2.5-0.5B-Instruct's config.json.
const QWEN25: &str = r#"{
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "hidden_act": "silu",
  "hidden_size": 896,
  "initializer_range": 0.02,
  "intermediate_size": 4864,
  "max_position_embeddings": 32768,
  "max_window_layers": 21,
  "model_type": "qwen2",
  "num_attention_heads": 14,
  "num_hidden_layers": 24,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 32768,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
}"#;

/// Qwen3-0.6B's config.json (explicit head_dim, larger than hidden/heads).
const QWEN3: &str = r#"{
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 1024,
  "intermediate_size": 3072,
  "max_position_embeddings": 40960,
  "model_type": "qwen3",
  "num_attention_heads": 16,
  "num_hidden_layers": 28,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "tie_word_embeddings": true,
  "vocab_size": 151936
}"#;

/// Llama-3.2-1B-style config with llama3 RoPE scaling and a list of EOS ids.
const LLAMA32: &str = r#"{
  "architectures": ["LlamaForCausalLM"],
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "hidden_size": 2048,
  "intermediate_size": 8192,
  "max_position_embeddings": 131072,
  "num_attention_heads": 32,
  "num_hidden_layers": 16,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": true,
  "vocab_size": 128256
}"#;

fn with(base: &str, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> String {
    let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
    edit(v.as_object_mut().unwrap());
    v.to_string()
}

fn config_err(text: &str) -> String {
    match ModelConfig::from_hf_json(text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn smollm2() {
    let c = ModelConfig::from_hf_json(SMOLLM2).unwrap();
    assert_eq!(
        c,
        ModelConfig {
            arch: Arch::Llama,
            hidden_size: 576,
            intermediate_size: 1536,
            num_layers: 30,
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
            vocab_size: 49152,
            rms_norm_eps: 1e-5,
            rope_theta: 100000.0,
            rope_scaling: None,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            attention_bias: false,
            qk_norm: false,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            sliding_window: None,
            mla: None,
            rotary_dim: None,
            moe: None,
        }
    );
}

#[test]
fn qwen2_and_qwen3() {
    let c = ModelConfig::from_hf_json(QWEN25).unwrap();
    assert_eq!(c.arch, Arch::Qwen2);
    assert!(c.attention_bias && !c.qk_norm && c.tie_word_embeddings);
    assert_eq!(c.head_dim, 64);
    assert_eq!(c.rope_theta, 1e6);
    assert_eq!(c.eos_token_ids, vec![151645]);

    let c = ModelConfig::from_hf_json(QWEN3).unwrap();
    assert_eq!(c.arch, Arch::Qwen3);
    assert!(c.qk_norm && !c.attention_bias);
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (16, 8, 128));
    let c = ModelConfig::from_hf_json(&with(QWEN3, |m| {
        m.insert("attention_bias".into(), true.into());
    }))
    .unwrap();
    assert!(c.attention_bias);
}

#[test]
fn mistral_and_defaults() {
    let text = r#"{"architectures":["MistralForCausalLM"],"hidden_size":64,"intermediate_size":128,
        "num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100,"max_position_embeddings":512,
        "head_dim":null,"sliding_window":4096}"#;
    let c = ModelConfig::from_hf_json(text).unwrap();
    assert_eq!(c.arch, Arch::Mistral);
    assert_eq!(c.num_kv_heads, 4);
    assert_eq!(c.head_dim, 16);
    assert_eq!(c.rope_theta, 10000.0);
    assert_eq!(c.rms_norm_eps, 1e-6);
    assert!(!c.tie_word_embeddings);
    assert_eq!(c.bos_token_id, None);
    assert!(c.eos_token_ids.is_empty());

    // model_type alone identifies the architecture.
    let c = ModelConfig::from_hf_json(&with(text, |m| {
        m.remove("architectures");
        m.insert("model_type".into(), "qwen2".into());
    }))
    .unwrap();
    assert_eq!(c.arch, Arch::Qwen2);
}

#[test]
fn rope_scaling_old_keys() {
    let c = ModelConfig::from_hf_json(LLAMA32).unwrap();
    assert_eq!(c.rope_theta, 500000.0);
    assert_eq!(
        c.rope_scaling,
        Some(RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192
        })
    );
    assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);

    let c = ModelConfig::from_hf_json(&with(SMOLLM2, |m| {
        m.insert(
            "rope_scaling".into(),
            serde_json::json!({"type": "linear", "factor": 2.0}),
        );
    }))
    .unwrap();
    assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 2.0 }));
    let c = ModelConfig::from_hf_json(&with(SMOLLM2, |m| {
        m.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "default"}),
        );
    }))
    .unwrap();
    assert_eq!(c.rope_scaling, None);
}

#[test]
fn rope_parameters_new_keys() {
    let text = with(LLAMA32, |m| {
        m.remove("rope_scaling");
        m.remove("rope_theta");
        m.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
        );
    });
    let c = ModelConfig::from_hf_json(&text).unwrap();
    assert_eq!(c.rope_theta, 500000.0);
    assert!(matches!(c.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0));

    let text = with(SMOLLM2, |m| {
        m.remove("rope_scaling");
        m.remove("rope_theta");
        m.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "default", "rope_theta": 1e6}),
        );
    });
    let c = ModelConfig::from_hf_json(&text).unwrap();
    assert_eq!((c.rope_theta, c.rope_scaling), (1e6, None));

    let text = with(SMOLLM2, |m| {
        m.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "linear", "factor": 4.0}),
        );
    });
    let c = ModelConfig::from_hf_json(&text).unwrap();
    assert_eq!(c.rope_theta, 100000.0); // falls back to the top-level key
    assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 4.0 }));
}

#[test]
fn config_errors() {
    let e = config_err(&with(SMOLLM2, |m| {
        m.remove("hidden_size");
    }));
    assert!(e.contains("missing field 'hidden_size'"), "{e}");
    let e = config_err(&with(SMOLLM2, |m| {
        m.insert("hidden_size".into(), "big".into());
    }));
    assert!(
        e.contains("field 'hidden_size' must be a non-negative integer"),
        "{e}"
    );
    let e = config_err(&with(SMOLLM2, |m| {
        m.remove("num_hidden_layers");
    }));
    assert!(e.contains("'num_hidden_layers'"), "{e}");

    let r = ModelConfig::from_hf_json(&with(SMOLLM2, |m| {
        m.insert(
            "architectures".into(),
            serde_json::json!(["GPTNeoXForCausalLM"]),
        );
    }));
    match r {
        Err(Error::UnsupportedArch(name, list)) => {
            assert_eq!(name, "GPTNeoXForCausalLM");
            assert!(list.contains("LlamaForCausalLM") && list.contains("Qwen3ForCausalLM"));
        }
        other => panic!("{other:?}"),
    }
    let r = ModelConfig::from_hf_json(r#"{"model_type":"gemma"}"#);
    assert!(matches!(r, Err(Error::UnsupportedArch(n, _)) if n == "gemma"));
    let e = config_err(r#"{"hidden_size": 4}"#);
    assert!(e.contains("architectures"), "{e}");

    for ty in ["yarn", "dynamic", "longrope"] {
        let e = config_err(&with(SMOLLM2, |m| {
            m.insert(
                "rope_scaling".into(),
                serde_json::json!({"type": ty, "factor": 4.0}),
            );
        }));
        assert!(
            e.contains(&format!("unsupported RoPE scaling type '{ty}'")),
            "{e}"
        );
        let e = config_err(&with(SMOLLM2, |m| {
            m.insert(
                "rope_parameters".into(),
                serde_json::json!({"rope_type": ty, "factor": 4.0}),
            );
        }));
        assert!(
            e.contains(&format!(
                "unsupported RoPE scaling type '{ty}' in 'rope_parameters'"
            )),
            "{e}"
        );
    }
    let e = config_err(&with(SMOLLM2, |m| {
        m.insert("rope_scaling".into(), serde_json::json!({"type": "linear"}));
    }));
    assert!(e.contains("missing field 'rope_scaling.factor'"), "{e}");
    let e = config_err(&with(LLAMA32, |m| {
        m["rope_scaling"]
            .as_object_mut()
            .unwrap()
            .remove("low_freq_factor");
    }));
    assert!(
        e.contains("missing field 'rope_scaling.low_freq_factor'"),
        "{e}"
    );

    let e = config_err(&with(SMOLLM2, |m| {
        m.insert("num_key_value_heads".into(), 4.into());
    }));
    assert!(e.contains("not a multiple of num_key_value_heads 4"), "{e}");
    let e = config_err(&with(SMOLLM2, |m| {
        m.insert("hidden_act".into(), "gelu".into());
    }));
    assert!(e.contains("hidden_act"), "{e}");
    let e = config_err("{not json");
    assert!(e.contains("not valid JSON"), "{e}");
    let e = config_err("[1]");
    assert!(e.contains("JSON object"), "{e}");
    let e = config_err(&with(SMOLLM2, |m| {
        m.insert("eos_token_id".into(), serde_json::json!([1, "x"]));
    }));
    assert!(e.contains("eos_token_id"), "{e}");
}

// ------------------------------------------------------------------ GGUF

fn gguf_config(dir: &TempDir, name: &str, b: GgufBuilder) -> mm_core::Result<ModelConfig> {
    let f = GgufFile::open(&dir.write(name, &b.build()))?;
    ModelConfig::from_gguf(&f)
}

#[test]
fn gguf_llama() {
    let dir = TempDir::new("cfg");
    let c = gguf_config(&dir, "a.gguf", llama_meta(GgufBuilder::new(), "llama")).unwrap();
    assert_eq!(
        c,
        ModelConfig {
            arch: Arch::Llama,
            hidden_size: 32,
            intermediate_size: 64,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            vocab_size: 16,
            rms_norm_eps: 1e-5,
            rope_theta: 100000.0,
            rope_scaling: None,
            max_position_embeddings: 256,
            tie_word_embeddings: true,
            attention_bias: false,
            qk_norm: false,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            sliding_window: None,
            mla: None,
            rotary_dim: None,
            moe: None,
        }
    );

    // output.weight present → untied; explicit vocab size, key length, EOT.
    let b = llama_meta(GgufBuilder::new(), "llama")
        .kv("llama.vocab_size", V::U32(20))
        .kv("llama.attention.key_length", V::U32(16))
        .kv("tokenizer.ggml.eot_token_id", V::U32(7))
        .kv("llama.rope.scaling.type", V::String("linear".into()))
        .kv("llama.rope.scaling.factor", V::F32(4.0))
        .f32_tensor("output.weight", &[20, 32], &vec![0.0; 640]);
    let c = gguf_config(&dir, "b.gguf", b).unwrap();
    assert!(!c.tie_word_embeddings);
    assert_eq!((c.vocab_size, c.head_dim), (20, 16));
    assert_eq!(c.eos_token_ids, vec![2, 7]);
    assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 4.0 }));

    // Per-layer KV head counts: one value when all layers agree.
    let mut b = llama_meta(GgufBuilder::new(), "llama");
    b.kv.retain(|(k, _)| k != "llama.attention.head_count_kv");
    let b2 = llama_meta(GgufBuilder::new(), "llama");
    let b = b.kv(
        "llama.attention.head_count_kv",
        V::Array(vec![V::U32(2), V::U32(2)]),
    );
    assert_eq!(gguf_config(&dir, "kv.gguf", b).unwrap().num_kv_heads, 2);
    let mut b = b2;
    b.kv.retain(|(k, _)| k != "llama.attention.head_count_kv");
    let b = b.kv(
        "llama.attention.head_count_kv",
        V::Array(vec![V::U32(2), V::U32(4)]),
    );
    let e = err_text(gguf_config(&dir, "kv2.gguf", b));
    assert!(e.contains("varies per layer"), "{e}");

    // Llama 3.1 rope_freqs tensor.
    let freqs: Vec<f32> = (0..4).map(|i| 1.0 + i as f32).collect();
    let b = llama_meta(GgufBuilder::new(), "llama").f32_tensor("rope_freqs.weight", &[4], &freqs);
    let c = gguf_config(&dir, "c.gguf", b).unwrap();
    assert_eq!(c.rope_scaling, Some(RopeScaling::FreqFactors(freqs)));
}

#[test]
fn gguf_qwen() {
    let dir = TempDir::new("cfgq");
    let c = gguf_config(&dir, "q2.gguf", llama_meta(GgufBuilder::new(), "qwen2")).unwrap();
    assert_eq!(c.arch, Arch::Qwen2);
    assert!(c.attention_bias && !c.qk_norm);
    let c = gguf_config(&dir, "q3.gguf", llama_meta(GgufBuilder::new(), "qwen3")).unwrap();
    assert_eq!(c.arch, Arch::Qwen3);
    assert!(c.qk_norm && !c.attention_bias);
    let b =
        llama_meta(GgufBuilder::new(), "qwen3").f32_tensor("blk.0.attn_q.bias", &[32], &[0.0; 32]);
    assert!(gguf_config(&dir, "q3b.gguf", b).unwrap().attention_bias);
}

#[test]
fn gguf_config_errors() {
    let dir = TempDir::new("cfge");
    let r = gguf_config(&dir, "g.gguf", llama_meta(GgufBuilder::new(), "gemma"));
    assert!(
        matches!(&r, Err(Error::UnsupportedArch(n, l)) if n == "gemma" && l.contains("qwen3")),
        "{r:?}"
    );

    let mut b = llama_meta(GgufBuilder::new(), "llama");
    b.kv.retain(|(k, _)| k != "llama.block_count");
    let e = err_text(gguf_config(&dir, "nb.gguf", b));
    assert!(
        e.contains("nb.gguf") && e.contains("'llama.block_count' is missing"),
        "{e}"
    );

    let b = GgufBuilder::new().kv("x", V::U8(0));
    let e = err_text(gguf_config(&dir, "na.gguf", b));
    assert!(e.contains("general.architecture"), "{e}");

    let b = llama_meta(GgufBuilder::new(), "llama")
        .kv("llama.rope.scaling.type", V::String("yarn".into()));
    let e = err_text(gguf_config(&dir, "yarn.gguf", b));
    assert!(e.contains("unsupported RoPE scaling type 'yarn'"), "{e}");

    let mut b = llama_meta(GgufBuilder::new(), "llama");
    b.kv.retain(|(k, _)| k != "llama.attention.head_count");
    let b = b.kv("llama.attention.head_count", V::String("4".into()));
    let e = err_text(gguf_config(&dir, "hc.gguf", b));
    assert!(e.contains("'llama.attention.head_count' is STRING"), "{e}");

    let b =
        llama_meta(GgufBuilder::new(), "llama").f32_tensor("rope_freqs.weight", &[3], &[1.0; 3]);
    let e = err_text(gguf_config(&dir, "rf.gguf", b));
    assert!(e.contains("rope_freqs has 3 factors"), "{e}");

    let b = llama_meta(GgufBuilder::new(), "llama").kv("llama.rope.dimension_count", V::U32(4));
    let e = err_text(gguf_config(&dir, "rd.gguf", b));
    assert!(e.contains("partial rotary"), "{e}");

    let b = llama_meta(GgufBuilder::new(), "llama").tensor(
        "rope_freqs.weight",
        &[32],
        F::Q8_0,
        mm_quant::ggml::quantize(F::Q8_0, &[1.0; 32]).unwrap(),
    );
    let e = err_text(gguf_config(&dir, "rq.gguf", b));
    assert!(e.contains("rope_freqs has 32 factors"), "{e}");
}

// ------------------------------------------------------------------ to_hf_json

/// `from_hf_json(to_hf_json(c)) == c`.
fn round_trip(c: &ModelConfig) {
    let v = c.to_hf_json();
    let back = ModelConfig::from_hf_json(&v.to_string())
        .unwrap_or_else(|e| panic!("{e}\n{}", serde_json::to_string_pretty(&v).unwrap()));
    assert_eq!(&back, c, "{}", serde_json::to_string_pretty(&v).unwrap());
}

#[test]
fn to_hf_json_round_trips() {
    for text in [SMOLLM2, QWEN25, QWEN3, LLAMA32] {
        round_trip(&ModelConfig::from_hf_json(text).unwrap());
    }
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
    let mut n = 0;
    for e in std::fs::read_dir(&fixtures).unwrap() {
        let p = e.unwrap().path().join("config.json");
        let c = ModelConfig::from_hf_json(&std::fs::read_to_string(&p).unwrap()).unwrap();
        round_trip(&c);
        n += 1;
    }
    assert!(n >= 7, "{n} fixtures");
    // Mistral's window, linear RoPE, several EOS ids, no BOS.
    let mut c = ModelConfig::from_hf_json(
        r#"{"architectures":["MistralForCausalLM"],"hidden_size":64,"intermediate_size":128,
        "num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100,"max_position_embeddings":512,
        "sliding_window":4096, "eos_token_id": [2, 7], "rms_norm_eps": 3e-7,
        "rope_scaling": {"type": "linear", "factor": 2.5}}"#,
    )
    .unwrap();
    round_trip(&c);
    c.sliding_window = None;
    round_trip(&c);
    // GGUF configs, per-frequency RoPE factors included.
    let dir = TempDir::new("tohf");
    round_trip(&gguf_config(&dir, "a.gguf", llama_meta(GgufBuilder::new(), "llama")).unwrap());
    round_trip(&gguf_config(&dir, "q.gguf", llama_meta(GgufBuilder::new(), "qwen2")).unwrap());
    let freqs = vec![1.0f32, 1.3333334, 7.25, 32.0];
    let b = llama_meta(GgufBuilder::new(), "llama").f32_tensor("rope_freqs.weight", &[4], &freqs);
    let c = gguf_config(&dir, "f.gguf", b).unwrap();
    assert_eq!(c.rope_scaling, Some(RopeScaling::FreqFactors(freqs)));
    round_trip(&c);
    let v = c.to_hf_json();
    assert_eq!(
        v["rope_scaling"]["rope_type"],
        mm_formats::FREQ_FACTORS_ROPE_TYPE
    );
    assert_eq!(v["architectures"][0], "LlamaForCausalLM");
    // Numbers are written as the shortest decimal of the f32.
    assert_eq!(v["rms_norm_eps"].as_f64(), Some(1e-5));
    // A malformed extension is a clear error.
    let bad = with(SMOLLM2, |m| {
        m.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "freq_factors", "factors": ["x"]}),
        );
    });
    assert!(config_err(&bad).contains("factors"));
}
