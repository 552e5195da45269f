//! `open_source`: HF directories and GGUF files under HF tensor names,
//! with llama.cpp's q/k permutation undone.

mod common;

use common::*;
use mm_core::{Error, WeightData, WeightFormat as F};
use mm_formats::{gguf_to_hf_name, hf_to_gguf_name, open_source, unpermute_rows, Arch};

/// llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py), on row indices:
/// `w.reshape(n_head, 2, D/2, cols).swapaxes(1, 2).reshape(rows, cols)`.
/// Returns, for each GGUF row, the HF row it holds.
fn converter_permutation(rows: usize, n_head: usize) -> Vec<usize> {
    let d = rows / n_head;
    let mut gguf_from_hf = vec![0; rows];
    for h in 0..n_head {
        for a in 0..2 {
            for b in 0..d / 2 {
                // Source index (h, a, b) lands at (h, b, a) after swapaxes.
                let hf = h * d + a * (d / 2) + b;
                let gg = h * d + b * 2 + a;
                gguf_from_hf[gg] = hf;
            }
        }
    }
    gguf_from_hf
}

/// HF matrix whose row r holds r*1000 + column.
fn hf_matrix(rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| ((i / cols) * 1000 + i % cols) as f32 / 64.0)
        .collect()
}

fn permute_rows(x: &[f32], cols: usize, perm: &[usize]) -> Vec<f32> {
    perm.iter()
        .flat_map(|&src| x[src * cols..(src + 1) * cols].iter().copied())
        .collect()
}

fn values(w: &WeightData) -> Vec<f32> {
    mm_quant::dequantize_ref(w).unwrap()
}

/// A 2-layer llama GGUF (4 heads of 8, 2 KV heads, hidden 32) whose q/k
/// weights and biases were permuted as llama.cpp's converter does; q in F32,
/// k in Q8_0 to check that quantized rows move as whole rows.
fn tiny_gguf(arch: &str) -> (GgufBuilder, Vec<f32>, Vec<f32>, Vec<f32>) {
    let (hidden, heads, kv_heads, d) = (32, 4, 2, 8);
    let q_hf = hf_matrix(heads * d, hidden);
    let k_hf = hf_matrix(kv_heads * d, hidden);
    let bias_hf: Vec<f32> = (0..heads * d).map(|i| i as f32).collect();
    let permute = arch == "llama";
    let pq = if permute {
        converter_permutation(heads * d, heads)
    } else {
        (0..heads * d).collect()
    };
    let pk = if permute {
        converter_permutation(kv_heads * d, kv_heads)
    } else {
        (0..kv_heads * d).collect()
    };
    let q_gguf = permute_rows(&q_hf, hidden, &pq);
    let k_gguf = mm_quant::ggml::quantize(F::Q8_0, &permute_rows(&k_hf, hidden, &pk)).unwrap();
    let bias_gguf = permute_rows(&bias_hf, 1, &pq);
    let b = llama_meta(GgufBuilder::new(), arch)
        .tensor(
            "token_embd.weight",
            &[16, 32],
            F::Q8_0,
            mm_quant::ggml::quantize(F::Q8_0, &hf_matrix(16, 32)).unwrap(),
        )
        .f32_tensor("output_norm.weight", &[32], &[1.0; 32])
        .f32_tensor("blk.0.attn_q.weight", &[32, 32], &q_gguf)
        .f32_tensor("blk.0.attn_q.bias", &[32], &bias_gguf)
        .tensor("blk.0.attn_k.weight", &[16, 32], F::Q8_0, k_gguf)
        .f32_tensor("blk.0.attn_v.weight", &[16, 32], &hf_matrix(16, 32))
        .f32_tensor("blk.1.ffn_down.weight", &[32, 64], &hf_matrix(32, 64));
    (b, q_hf, k_hf, bias_hf)
}

#[test]
fn gguf_llama_unpermutes_q_and_k() {
    let dir = TempDir::new("src");
    let (b, q_hf, k_hf, bias_hf) = tiny_gguf("llama");
    let path = dir.write("tiny.gguf", &b.build());
    let src = open_source(&path).unwrap();
    assert_eq!(src.config().arch, Arch::Llama);
    assert!(src.gguf().is_some() && src.safetensors().is_none());
    assert_eq!(src.path(), Some(path.as_path()));

    let q = src
        .tensor("model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    assert_eq!(q.shape, vec![32, 32]);
    assert_eq!(values(&q), q_hf);
    let bias = src.tensor("model.layers.0.self_attn.q_proj.bias").unwrap();
    assert_eq!(values(&bias), bias_hf);
    let k = src
        .tensor("model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    assert_eq!(k.format, F::Q8_0);
    let k_ref = mm_quant::ggml::dequantize(
        F::Q8_0,
        &mm_quant::ggml::quantize(F::Q8_0, &k_hf).unwrap(),
        k_hf.len(),
    )
    .unwrap();
    assert_eq!(values(&k), k_ref);
    // v is not permuted.
    assert_eq!(
        values(
            &src.tensor("model.layers.0.self_attn.v_proj.weight")
                .unwrap()
        ),
        hf_matrix(16, 32)
    );

    assert!(src.contains("model.embed_tokens.weight"));
    assert!(src.contains("model.norm.weight"));
    assert!(!src.contains("lm_head.weight"));
    assert!(src.config().tie_word_embeddings);
    assert!(src.contains("model.layers.1.mlp.down_proj.weight"));
    assert!(!src.contains("model.layers.1.mlp.up_proj.weight"));
    // A tensor the file lacks: the error names it and what it stands for.
    let e = err_text(src.tensor("model.layers.1.mlp.up_proj.weight"));
    assert!(
        e.contains("'blk.1.ffn_up.weight' is missing")
            && e.contains("'model.layers.1.mlp.up_proj.weight'"),
        "{e}"
    );
    assert!(matches!(
        src.tensor("not.a.name"),
        Err(Error::MissingTensor(_))
    ));

    let d = src.describe();
    assert_eq!(d.len(), 7);
    assert!(d.contains(&(
        "model.layers.0.self_attn.k_proj.weight".into(),
        "Q8_0".into(),
        vec![16, 32]
    )));
    assert!(d.windows(2).all(|w| w[0].0 <= w[1].0));
}

#[test]
fn gguf_qwen_is_not_permuted() {
    let dir = TempDir::new("srcq");
    for arch in ["qwen2", "qwen3"] {
        let (b, q_hf, _, bias_hf) = tiny_gguf(arch);
        let src = open_source(&dir.write(&format!("{arch}.gguf"), &b.build())).unwrap();
        assert_eq!(
            values(
                &src.tensor("model.layers.0.self_attn.q_proj.weight")
                    .unwrap()
            ),
            q_hf
        );
        assert_eq!(
            values(&src.tensor("model.layers.0.self_attn.q_proj.bias").unwrap()),
            bias_hf
        );
    }
}

#[test]
fn unpermute_inverts_the_converter() {
    for (rows, heads) in [(8, 1), (32, 4), (48, 3), (128, 2)] {
        let perm = converter_permutation(rows, heads);
        let hf = hf_matrix(rows, 32);
        let gg = permute_rows(&hf, 32, &perm);
        let w = WeightData::from_f32(vec![rows, 32], &gg).unwrap();
        assert_eq!(
            values(&unpermute_rows(&w, heads).unwrap()),
            hf,
            "{rows} rows, {heads} heads"
        );
        // Q4_0 rows of 32 values (18 bytes) move as units.
        let qb = mm_quant::ggml::quantize(F::Q4_0, &gg).unwrap();
        let w = WeightData::new(F::Q4_0, vec![rows, 32], mm_core::HostBytes::owned(qb)).unwrap();
        let want = mm_quant::ggml::dequantize(
            F::Q4_0,
            &mm_quant::ggml::quantize(F::Q4_0, &hf).unwrap(),
            hf.len(),
        )
        .unwrap();
        assert_eq!(values(&unpermute_rows(&w, heads).unwrap()), want);
    }
    let w = WeightData::from_f32(vec![6, 2], &[0.0; 12]).unwrap();
    assert!(unpermute_rows(&w, 4).is_err());
    assert!(unpermute_rows(&w, 2).is_err()); // head width 3 is odd
    assert!(unpermute_rows(&w, 0).is_err());
}

#[test]
fn name_mapping() {
    let pairs = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
        (
            "model.layers.0.input_layernorm.weight",
            "blk.0.attn_norm.weight",
        ),
        (
            "model.layers.12.post_attention_layernorm.weight",
            "blk.12.ffn_norm.weight",
        ),
        (
            "model.layers.3.self_attn.q_proj.weight",
            "blk.3.attn_q.weight",
        ),
        ("model.layers.3.self_attn.k_proj.bias", "blk.3.attn_k.bias"),
        ("model.layers.3.self_attn.v_proj.bias", "blk.3.attn_v.bias"),
        (
            "model.layers.3.self_attn.o_proj.weight",
            "blk.3.attn_output.weight",
        ),
        (
            "model.layers.3.self_attn.q_norm.weight",
            "blk.3.attn_q_norm.weight",
        ),
        (
            "model.layers.3.self_attn.k_norm.weight",
            "blk.3.attn_k_norm.weight",
        ),
        (
            "model.layers.3.mlp.gate_proj.weight",
            "blk.3.ffn_gate.weight",
        ),
        ("model.layers.3.mlp.up_proj.weight", "blk.3.ffn_up.weight"),
        (
            "model.layers.3.mlp.down_proj.weight",
            "blk.3.ffn_down.weight",
        ),
    ];
    for (hf, gg) in pairs {
        assert_eq!(hf_to_gguf_name(hf).as_deref(), Some(gg));
        assert_eq!(gguf_to_hf_name(gg).as_deref(), Some(hf));
    }
    for bad in [
        "model.layers.x.mlp.up_proj.weight",
        "model.layers.01.mlp.up_proj.weight",
        "model.layers.1.mlp.up_proj.scale",
        "model.layers.1.foo.weight",
        "model.layers..mlp.up_proj.weight",
        "rope_freqs.weight",
    ] {
        assert_eq!(hf_to_gguf_name(bad), None, "{bad}");
    }
    assert_eq!(gguf_to_hf_name("rope_freqs.weight"), None);
}

#[test]
fn hf_directory() {
    let dir = TempDir::new("hf");
    dir.write(
        "config.json",
        br#"{"architectures":["LlamaForCausalLM"],"hidden_size":4,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"vocab_size":3,"max_position_embeddings":16}"#,
    );
    dir.write(
        "model.safetensors",
        &st_f32(&[
            ("model.embed_tokens.weight", vec![3, 4], vec![0.5; 12]),
            (
                "model.layers.0.self_attn.q_proj.weight",
                vec![4, 4],
                hf_matrix(4, 4),
            ),
        ]),
    );
    let src = open_source(dir.path()).unwrap();
    assert_eq!(src.config().hidden_size, 4);
    assert!(src.gguf().is_none() && src.safetensors().is_some());
    // HF weights are already in HF order: no permutation.
    assert_eq!(
        values(
            &src.tensor("model.layers.0.self_attn.q_proj.weight")
                .unwrap()
        ),
        hf_matrix(4, 4)
    );
    assert!(src.contains("model.embed_tokens.weight"));
    assert!(!src.contains("lm_head.weight"));
    assert_eq!(
        src.describe(),
        vec![
            (
                "model.embed_tokens.weight".to_string(),
                "F32".to_string(),
                vec![3, 4]
            ),
            (
                "model.layers.0.self_attn.q_proj.weight".to_string(),
                "F32".to_string(),
                vec![4, 4]
            ),
        ]
    );

    dir.write("config.json", br#"{"architectures":["LlamaForCausalLM"]}"#);
    let e = err_text(open_source(dir.path()));
    assert!(
        e.contains("config.json") && e.contains("missing field 'hidden_size'"),
        "{e}"
    );
}

#[test]
fn open_source_errors() {
    let dir = TempDir::new("srce");
    let e = open_source(&dir.path().join("nope.gguf")).err().unwrap();
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("nope.gguf"),
        "{e}"
    );

    let e = open_source(dir.path()).err().unwrap();
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("config.json"),
        "{e}"
    );

    let p = dir.write("model.bin", b"PK\x03\x04 not a model");
    let e = err_text(open_source(&p));
    assert!(
        e.contains("model.bin") && e.contains("not a GGUF file or model directory"),
        "{e}"
    );
    let p = dir.write("tiny", b"GG");
    assert!(err_text(open_source(&p)).contains("not a GGUF file or model directory"));
    let p = dir.write("empty", b"");
    assert!(err_text(open_source(&p)).contains("not a GGUF file or model directory"));
    let p = dir.write("w.safetensors", &st_f32(&[("a", vec![1], vec![1.0])]));
    assert!(err_text(open_source(&p)).contains("pass the model directory"));

    // A GGUF with a bad header is reported as such.
    let p = dir.write("bad.gguf", b"GGUF\x01\0\0\0");
    assert!(err_text(open_source(&p)).contains("version 1"));
    // Unsupported architecture.
    let p = dir.write(
        "gemma.gguf",
        &llama_meta(GgufBuilder::new(), "gemma").build(),
    );
    assert!(matches!(
        open_source(&p).err().unwrap(),
        Error::UnsupportedArch(..)
    ));
}
