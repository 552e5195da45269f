//! metal-marlin quantized model directories: the sharded safetensors
//! writer, and loading quantized weights in their stored format.

mod common;

use common::*;
use mm_core::weight::MmFormat;
use mm_core::{HostBytes, WeightFormat};
use mm_formats::writer::{shard_file_name, Dtype};
use mm_formats::{open_source, SafetensorsPlan, SafetensorsSet, TensorSpec};
use mm_quant::mm::{quantize_rtn, QuantMethod, QuantizationConfig};

/// A tiny llama config.json: hidden 32, 4 heads, 1 layer, vocab 16.
const CONFIG: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "hidden_size": 32, "intermediate_size": 64,
  "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
  "vocab_size": 16, "max_position_embeddings": 64, "rms_norm_eps": 1e-5
}"#;

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32 / 500.0
                - 1.0
        })
        .collect()
}

#[test]
fn writer_plans_shards_and_reads_back() {
    let dir = TempDir::new("writer");
    let mk = |name: &str, dtype, shape: Vec<usize>| TensorSpec::new(name, dtype, shape);
    // Groups of 312, 400 and 612 bytes, a 700-byte limit: 3 shards.
    let groups = vec![
        vec![
            mk("a.qweight", Dtype::U8, vec![8, 33]),
            mk("a.scales", Dtype::F16, vec![8, 3]),
        ],
        vec![mk("b", Dtype::F32, vec![100])],
        vec![
            mk("c", Dtype::BF16, vec![300]),
            mk("d", Dtype::F32, vec![3]),
        ],
    ];
    let plan = SafetensorsPlan::new(groups, 700, &[("format", "pt")]).unwrap();
    assert_eq!(plan.shards().len(), 3);
    assert_eq!(plan.total_size(), 8 * 33 + 48 + 400 + 600 + 12);
    assert_eq!(plan.shards()[0].file_name, shard_file_name(0, 3));
    assert_eq!(shard_file_name(1, 3), "model-00002-of-00003.safetensors");
    let wm = plan.weight_map();
    assert_eq!(wm["a.qweight"], wm["a.scales"]);
    assert_eq!(wm["c"], wm["d"]);
    // 4-byte dtypes first inside a shard.
    assert_eq!(plan.shards()[2].tensors[0].0.name, "d");
    assert_eq!(plan.shards()[0].tensors[0].0.name, "a.scales");

    let mut w = plan.create(dir.path()).unwrap();
    let data = |n: usize, k: u8| {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(k))
            .collect::<Vec<u8>>()
    };
    // Pieces of any size, in order.
    let aq = data(264, 3);
    w.write("a.qweight", &aq[..100]).unwrap();
    w.write("a.qweight", &aq[100..]).unwrap();
    assert!(err_text(w.write("a.qweight", &[1])).contains("overruns"));
    assert!(err_text(w.write("zz", &[1])).contains("not in the plan"));
    w.write("a.scales", &data(48, 5)).unwrap();
    w.write("b", &data(400, 7)).unwrap();
    w.write("c", &data(600, 11)).unwrap();
    // 'd' is missing: finish refuses.
    let e = err_text(w.finish());
    assert!(e.contains("not written in full") && e.contains('d'), "{e}");

    // Again, complete.
    let groups = vec![
        vec![
            mk("a.qweight", Dtype::U8, vec![8, 33]),
            mk("a.scales", Dtype::F16, vec![8, 3]),
        ],
        vec![mk("b", Dtype::F32, vec![100])],
        vec![
            mk("c", Dtype::BF16, vec![300]),
            mk("d", Dtype::F32, vec![3]),
        ],
    ];
    let plan = SafetensorsPlan::new(groups, 700, &[("format", "pt")]).unwrap();
    let mut w = plan.create(dir.path()).unwrap();
    for (n, len, k) in [
        ("a.qweight", 264, 3),
        ("a.scales", 48, 5),
        ("b", 400, 7),
        ("c", 600, 11),
        ("d", 12, 13),
    ] {
        w.write(n, &data(len, k)).unwrap();
    }
    let plan = w.finish().unwrap();
    let set = SafetensorsSet::open_dir(dir.path()).unwrap();
    assert_eq!(set.len(), 5);
    for (n, len, k) in [
        ("a.qweight", 264, 3),
        ("a.scales", 48, 5),
        ("b", 400, 7),
        ("c", 600, 11),
        ("d", 12, 13),
    ] {
        let (_, _, b) = set.raw(n).unwrap();
        assert_eq!(&b[..], &data(len, k)[..], "{n}");
    }
    let (dt, shape, _) = set.raw("a.scales").unwrap();
    assert_eq!((dt.as_str(), shape), ("F16", vec![8, 3]));
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(index["metadata"]["total_size"], plan.total_size());
    assert_eq!(index["weight_map"].as_object().unwrap().len(), 5);
}

#[test]
fn writer_rejects_bad_plans() {
    let t = |n: &str| TensorSpec::new(n, Dtype::F32, vec![2]);
    assert!(err_text(SafetensorsPlan::new(
        vec![vec![t("a")], vec![t("a")]],
        100,
        &[]
    ))
    .contains("twice"));
    assert!(err_text(SafetensorsPlan::new(vec![], 100, &[])).contains("at least one"));
    assert!(err_text(SafetensorsPlan::new(vec![vec![t("a")]], 0, &[])).contains("positive"));
    assert!(
        err_text(SafetensorsPlan::new(vec![vec![t("__metadata__")]], 10, &[]))
            .contains("cannot be")
    );
    let big = TensorSpec::new("x", Dtype::F32, vec![usize::MAX, 4]);
    assert!(err_text(SafetensorsPlan::new(vec![vec![big]], 10, &[])).contains("overflows"));
}

/// Writes a quantized tiny-llama-shaped directory: q_proj in `fmt`, k_proj
/// (int8 per-channel) as an override, the embedding unquantized (F32), a
/// norm. Returns the f32 values of q_proj.
fn quantized_dir(dir: &std::path::Path, fmt: MmFormat, qc: Option<&str>) -> Vec<f32> {
    let qv = values(32 * 32, 1);
    let kv = values(16 * 32, 2);
    let q = quantize_rtn(&qv, 32, 32, fmt).unwrap();
    let k8 = MmFormat::parse("int8", 0).unwrap();
    let k = quantize_rtn(&kv, 16, 32, k8).unwrap();
    let mut groups = Vec::new();
    let mut data: Vec<(String, Vec<u8>)> = Vec::new();
    for (base, t) in [
        ("model.layers.0.self_attn.q_proj", &q),
        ("model.layers.0.self_attn.k_proj", &k),
    ] {
        let mut g = Vec::new();
        for p in t.parts().unwrap() {
            let name = format!("{base}.{}", p.suffix);
            let dt = if p.dtype == "F16" {
                Dtype::F16
            } else {
                Dtype::U8
            };
            g.push(TensorSpec::new(&name, dt, p.shape.clone()));
            data.push((name, p.data.to_vec()));
        }
        groups.push(g);
    }
    let emb = values(16 * 32, 3);
    groups.push(vec![TensorSpec::new(
        "model.embed_tokens.weight",
        Dtype::F32,
        vec![16, 32],
    )]);
    data.push((
        "model.embed_tokens.weight".into(),
        bytemuck::cast_slice(&emb).to_vec(),
    ));
    groups.push(vec![TensorSpec::new(
        "model.norm.weight",
        Dtype::F32,
        vec![32],
    )]);
    data.push((
        "model.norm.weight".into(),
        bytemuck::cast_slice(&vec![1f32; 32]).to_vec(),
    ));
    let plan = SafetensorsPlan::new(groups, 2000, &[]).unwrap();
    let mut w = plan.create(dir).unwrap();
    for (n, d) in &data {
        w.write(n, d).unwrap();
    }
    w.finish().unwrap();
    std::fs::write(dir.join("config.json"), CONFIG).unwrap();
    let text = match qc {
        Some(t) => t.to_string(),
        None => QuantizationConfig::new(fmt, QuantMethod::Rtn)
            .unwrap()
            .with_override("model.layers.0.self_attn.k_proj.weight", k8)
            .unwrap()
            .with_unquantized("model.embed_tokens.weight")
            .unwrap()
            .to_json(),
    };
    std::fs::write(dir.join("quantization_config.json"), text).unwrap();
    q.dequantize().unwrap()
}

#[test]
fn loads_quantized_weights_zero_copy() {
    for (name, group) in [
        ("int4", 32),
        ("int4-asym", 32),
        ("nf4", 0),
        ("fp8-e4m3", 32),
        ("mxfp4", 32),
        ("int3", 32),
    ] {
        let dir = TempDir::new("qload");
        let fmt = MmFormat::parse(name, group).unwrap();
        let want = quantized_dir(dir.path(), fmt, None);
        let src = open_source(dir.path()).unwrap();
        let q = src
            .tensor("model.layers.0.self_attn.q_proj.weight")
            .unwrap();
        assert_eq!(q.format, WeightFormat::Mm(fmt), "{name}");
        assert_eq!(q.shape, vec![32, 32]);
        assert!(
            matches!(q.bytes, HostBytes::Mapped { .. }),
            "{name}: codes are copied"
        );
        assert!(matches!(q.scales, Some(HostBytes::Mapped { .. })));
        assert_eq!(q.zeros.is_some(), fmt.kind.has_zeros());
        assert_eq!(mm_quant::dequantize_ref(&q).unwrap(), want, "{name}");
        let k = src
            .tensor("model.layers.0.self_attn.k_proj.weight")
            .unwrap();
        assert_eq!(
            k.format,
            WeightFormat::Mm(MmFormat::parse("int8", 0).unwrap())
        );
        assert_eq!(k.shape, vec![16, 32]);
        let e = src.tensor("model.embed_tokens.weight").unwrap();
        assert_eq!(e.format, WeightFormat::F32);
        assert!(src.contains("model.layers.0.self_attn.q_proj.weight"));
        assert!(!src.contains("model.layers.0.self_attn.v_proj.weight"));
        assert!(src.quantization().is_some());
        let d = src.describe();
        let names: Vec<&str> = d.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "model.embed_tokens.weight",
                "model.layers.0.self_attn.k_proj.weight",
                "model.layers.0.self_attn.q_proj.weight",
                "model.norm.weight"
            ]
        );
        let label = if group == 0 {
            format!("{name}/per-channel")
        } else {
            format!("{name}/g{group}")
        };
        assert_eq!(d[2].1, label);
        assert_eq!(d[2].2, vec![32, 32]);
        assert_eq!(d[1].1, "int8/per-channel");
        assert_eq!(d[0].1, "F32");
    }
}

fn open_err(dir: &std::path::Path) -> String {
    match open_source(dir) {
        Ok(_) => panic!("{} opened", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_quantized_directories() {
    let int4 = MmFormat::parse("int4", 32).unwrap();
    // Unsupported format version.
    let dir = TempDir::new("qver");
    quantized_dir(
        dir.path(),
        int4,
        Some(r#"{"format_version": 2, "format": "int4", "group_size": 32}"#),
    );
    let e = open_err(dir.path());
    assert!(
        e.contains("format_version 2") && e.contains("quantization_config.json"),
        "{e}"
    );

    // The config gives q_proj a format its parts do not have.
    let dir = TempDir::new("qfmt");
    quantized_dir(
        dir.path(),
        int4,
        Some(
            r#"{"format_version": 1, "format": "int8", "group_size": 32,
        "overrides": {"model.layers.0.self_attn.k_proj.weight": {"format": "int8", "group_size": 0}}}"#,
        ),
    );
    let e = open_err(dir.path());
    assert!(e.contains("model.layers.0.self_attn.q_proj.qweight"), "{e}");

    // The config lists a stored quantized weight as unquantized.
    let dir = TempDir::new("qunq");
    quantized_dir(
        dir.path(),
        int4,
        Some(
            r#"{"format_version": 1, "format": "int4", "group_size": 32,
        "overrides": {"model.layers.0.self_attn.k_proj.weight": {"format": "int8", "group_size": 0}},
        "unquantized": ["model.layers.0.self_attn.q_proj.weight"]}"#,
        ),
    );
    let e = open_err(dir.path());
    assert!(
        e.contains("q_proj.weight") && e.contains("unquantized"),
        "{e}"
    );

    // A scales part is missing.
    let dir = TempDir::new("qmiss");
    quantized_dir(dir.path(), int4, None);
    let set = SafetensorsSet::open_dir(dir.path()).unwrap();
    let names: Vec<String> = set.names().map(String::from).collect();
    drop(set);
    // Rewrite the checkpoint without q_proj.scales.
    let mut groups = Vec::new();
    let mut data = Vec::new();
    {
        let set = SafetensorsSet::open_dir(dir.path()).unwrap();
        for n in names.iter().filter(|n| !n.ends_with("q_proj.scales")) {
            let (dt, shape, b) = set.raw(n).unwrap();
            let dt = match dt.as_str() {
                "F32" => Dtype::F32,
                "F16" => Dtype::F16,
                _ => Dtype::U8,
            };
            groups.push(vec![TensorSpec::new(n, dt, shape)]);
            data.push((n.clone(), b.to_vec()));
        }
    }
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let mut w = SafetensorsPlan::new(groups, 1 << 20, &[])
        .unwrap()
        .create(dir.path())
        .unwrap();
    for (n, d) in &data {
        w.write(n, d).unwrap();
    }
    w.finish().unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("q_proj.scales") && e.contains("missing"), "{e}");

    // Quantized parts without a quantization_config.json.
    let dir = TempDir::new("qnocfg");
    quantized_dir(dir.path(), int4, None);
    std::fs::remove_file(dir.path().join("quantization_config.json")).unwrap();
    let src = open_source(dir.path()).unwrap();
    let e = err_text(src.tensor("model.layers.0.self_attn.q_proj.weight"));
    assert!(
        e.contains("quantization_config.json") && e.contains("q_proj.qweight"),
        "{e}"
    );

    // Both the float weight and its quantized parts.
    let dir = TempDir::new("qboth");
    quantized_dir(dir.path(), int4, None);
    let extra = st_f32(&[(
        "model.layers.0.self_attn.q_proj.weight",
        vec![32, 32],
        values(1024, 9),
    )]);
    std::fs::write(dir.path().join("extra.safetensors"), extra).unwrap();
    let mut idx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    idx["weight_map"]["model.layers.0.self_attn.q_proj.weight"] = "extra.safetensors".into();
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        idx.to_string(),
    )
    .unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("both") && e.contains("q_proj"), "{e}");
}
