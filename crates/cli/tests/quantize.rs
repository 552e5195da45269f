//! `metal-marlin quantize` end to end: the tiny fixture models (HF
//! directories in bf16) quantized into every format family, the output
//! layout, the logits of the quantized model against the unquantized one,
//! `--keep` and recipes, and every bad-input case (clear error, exit 1,
//! nothing written).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use mm_core::WeightFormat;
use mm_formats::open_source;
use serde_json::Value;

const FIXTURES: [&str; 7] = DENSE_FIXTURES;

#[test]
fn layout_index_and_config() {
    let t = Tmp::new("layout");
    let out = t.join("llama-int8");
    let o = out.to_str().unwrap();
    let src = tiny("llama");
    // 40 KB shards: the ~160 KB of tensors need several.
    let err = ok(&[
        "quantize",
        src.to_str().unwrap(),
        "--format",
        "int8",
        "--group-size",
        "32",
        "--shard-size",
        "40KB",
        "-o",
        o,
    ]);
    assert!(
        err.contains("wrote") && err.contains("int8/g32: 14"),
        "{err}"
    );

    // Files.
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    files.sort();
    let shards: Vec<&String> = files.iter().filter(|f| f.starts_with("model-")).collect();
    let n = shards.len();
    assert!(n >= 3, "{files:?}");
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(**s, format!("model-{:05}-of-{:05}.safetensors", i + 1, n));
        assert!(std::fs::metadata(out.join(s)).unwrap().len() <= 40_000 + 4096);
    }
    for f in [
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "quantization_config.json",
    ] {
        assert!(files.contains(&f.to_string()), "{f} missing: {files:?}");
    }
    assert_eq!(files.len(), n + 4, "{files:?}");
    // The temporary directory is gone.
    assert_eq!(std::fs::read_dir(&t.0).unwrap().count(), 1);
    // config.json and generation_config.json are copied unchanged.
    for f in ["config.json", "generation_config.json"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(src.join(f)).unwrap()
        );
    }

    // index.json: every stored tensor, in the shard that holds it, and the
    // total of their sizes.
    let index = read_json(&out.join("model.safetensors.index.json"));
    let wm = index["weight_map"].as_object().unwrap();
    let mut total = 0u64;
    for s in &shards {
        let set = mm_formats::SafetensorsSet::open_files(&out, &[out.join(s)]).unwrap();
        for name in set.names() {
            assert_eq!(wm[name], s.as_str(), "{name}");
            total += set.raw(name).unwrap().2.len() as u64;
        }
    }
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(total));
    let stored = stored_tensors(&out);
    assert_eq!(wm.len(), stored.len());
    // A weight's parts share a shard.
    assert_eq!(
        wm["model.layers.1.mlp.up_proj.qweight"],
        wm["model.layers.1.mlp.up_proj.scales"]
    );
    // Parts per docs/FORMAT.md §3; norms F32; embeddings in the source dtype.
    let q = |n: &str| stored[n].clone();
    let s = |d: &str, sh: &[usize]| (d.to_string(), sh.to_vec());
    assert_eq!(
        q("model.layers.0.self_attn.q_proj.qweight"),
        s("U8", &[64, 64])
    );
    assert_eq!(
        q("model.layers.0.self_attn.q_proj.scales"),
        s("F16", &[64, 2])
    );
    assert_eq!(q("model.layers.0.mlp.down_proj.scales"), s("F16", &[64, 4]));
    assert_eq!(
        q("model.layers.0.self_attn.k_proj.qweight"),
        s("U8", &[32, 64])
    );
    assert!(!stored.contains_key("model.layers.0.self_attn.q_proj.zeros"));
    assert!(!stored.contains_key("model.layers.0.self_attn.q_proj.weight"));
    assert_eq!(q("model.layers.0.input_layernorm.weight"), s("F32", &[64]));
    assert_eq!(q("model.norm.weight"), s("F32", &[64]));
    assert_eq!(q("model.embed_tokens.weight"), s("BF16", &[320, 64]));
    assert_eq!(q("lm_head.weight"), s("BF16", &[320, 64]));

    // quantization_config.json.
    let qc = read_json(&out.join("quantization_config.json"));
    assert_eq!(qc["format_version"], 1);
    assert_eq!(qc["format"], "int8");
    assert_eq!(qc["bits"], 8);
    assert_eq!(qc["group_size"], 32);
    assert_eq!(qc["method"], "rtn");
    assert_eq!(qc["overrides"], serde_json::json!({}));
    assert_eq!(
        qc["unquantized"],
        serde_json::json!(["model.embed_tokens.weight", "lm_head.weight"])
    );
    assert_eq!(qc["recipe"], Value::Null);

    // It loads, with the stored formats, zero-copy.
    let src = open_source(&out).unwrap();
    let w = src
        .tensor("model.layers.1.self_attn.o_proj.weight")
        .unwrap();
    assert_eq!(
        w.format,
        WeightFormat::Mm(mm_quant::MmFormat::parse("int8", 32).unwrap())
    );
    assert!(matches!(w.bytes, mm_core::HostBytes::Mapped { .. }));
    let d = src.describe();
    assert_eq!(d.len(), 21);
    assert!(d.iter().any(|t| t.0 == "model.layers.0.mlp.up_proj.weight"
        && t.1 == "int8/g32"
        && t.2 == [128, 64]));

    // `info` shows the quantization.
    let info = run(&["info", "-m", o, "--tensors"]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("int8/g32 (rtn)"), "{text}");
    assert!(text.contains("int8/g32: 14"), "{text}");
}

/// Every format family on every fixture architecture, against the
/// unquantized model.
///
/// The fixtures are random-weight models: their output distributions are
/// nearly flat (max |logit| ≈ 3, logit std ≈ 0.8, top-1/top-2 margins down
/// to 0.02), and random matrices have no structure that quantization could
/// preserve, so the relative error is much larger than on a trained model
/// (see `smollm2_gguf`) and top-1 agreement flips on near-ties. Measured
/// worst cases over the 7 fixtures (rel = max |Δlogit| / max |logit|):
///
/// | format   | rel   | top-1 | mean KL |
/// |----------|-------|-------|---------|
/// | int8 g32 | 0.028 | 0.83  | 1.8e-4  |
/// | fp8 g32  | 0.118 | 0.75  | 2.8e-3  |
/// | int4 g32 | 0.418 | 0.42  | 4.3e-2  |
/// | nf4 g32  | 0.395 | 0.50  | 3.7e-2  |
/// | mxfp4    | 0.515 | 0.42  | 5.9e-2  |
///
/// The bounds leave about 1.5× head-room; the error must also order as the
/// code widths do (int8 < fp8 < 4-bit formats), per fixture, in KL.
#[test]
fn quantized_logits_are_close() {
    let t = Tmp::new("logits");
    // (tag, args, max rel, min top-1, max mean KL).
    let cases: &[(&str, &[&str], f32, f32, f32)] = &[
        // int8: step absmax/127 per group of 32.
        (
            "int8-g32",
            &["--format", "int8", "--group-size", "32"],
            0.05,
            0.75,
            5e-4,
        ),
        // fp8 e4m3: 3 mantissa bits, relative error ≤ 2^-4 per weight.
        (
            "fp8-g32",
            &["--format", "fp8-e4m3", "--group-size", "32"],
            0.2,
            0.6,
            6e-3,
        ),
        // 4-bit: 16x coarser steps than int8.
        (
            "int4-g32",
            &["--format", "int4", "--group-size", "32"],
            0.6,
            0.25,
            0.08,
        ),
        (
            "nf4-g32",
            &["--format", "nf4", "--group-size", "32"],
            0.6,
            0.25,
            0.08,
        ),
        // mxfp4: E2M1 with power-of-two scales, the coarsest.
        ("mxfp4", &["--format", "mxfp4"], 0.75, 0.25, 0.1),
    ];
    let mut bad = Vec::new();
    for fixture in FIXTURES {
        let mut kl = std::collections::HashMap::new();
        for (tag, args, max_rel, min_top1, max_kl) in cases {
            let c = quantized_closeness(&t, fixture, tag, args);
            kl.insert(*tag, c.kl);
            if !(c.rel_max <= *max_rel && c.top1 >= *min_top1 && c.kl <= *max_kl) {
                bad.push(format!(
                    "{fixture} {tag}: {c:?} outside (rel {max_rel}, top1 {min_top1}, kl {max_kl})"
                ));
            }
        }
        for four in ["int4-g32", "nf4-g32", "mxfp4"] {
            if !(kl["int8-g32"] < kl["fp8-g32"] && kl["fp8-g32"] < kl[four]) {
                bad.push(format!(
                    "{fixture}: KL does not grow as bits shrink: {kl:?}"
                ));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Mixture-of-experts fixtures: every routed and shared expert is
/// quantized (Mixtral's `w1`/`w2`/`w3` as the `*_proj` ones), routers and
/// their correction biases stay in float, and the quantized model loads and
/// runs close to the source, within the dense fixtures' bounds
/// ([`quantized_logits_are_close`]; 4-bit experts may also flip near-tied
/// routing decisions). Measured worst cases over the 5 fixtures: int8 g32
/// rel 0.033, top-1 0.83, KL 3.1e-4; int4 g32 rel 0.54, top-1 0.33, KL
/// 4.3e-2.
#[test]
fn moe_experts_are_quantized_and_run() {
    let t = Tmp::new("moe");
    let mut bad = Vec::new();
    for fixture in [
        "qwen3-moe",
        "qwen3-moe-renorm",
        "mixtral",
        "glm4-moe",
        "glm4-moe-plain",
    ] {
        for (tag, args, max_rel, min_top1, max_kl) in [
            (
                "int8-g32",
                ["--format", "int8", "--group-size", "32"],
                0.05,
                0.75,
                5e-4,
            ),
            (
                "int4-g32",
                ["--format", "int4", "--group-size", "32"],
                0.6,
                0.25,
                0.08,
            ),
        ] {
            let c = quantized_closeness(&t, fixture, tag, &args);
            if !(c.rel_max <= max_rel && c.top1 >= min_top1 && c.kl <= max_kl) {
                bad.push(format!(
                    "{fixture} {tag}: {c:?} outside (rel {max_rel}, top1 {min_top1}, kl {max_kl})"
                ));
            }
            let out = t.join(&format!("{fixture}-{tag}"));
            let described = open_source(&out).unwrap().describe();
            let mut experts = 0;
            for (name, format, shape) in &described {
                let float = ["BF16", "F16", "F32"].contains(&format.as_str());
                let expert = name.contains("experts.") && shape.len() == 2;
                let router = name.ends_with(".gate.weight") || name.contains("correction_bias");
                if (expert && float) || (router && !float) {
                    bad.push(format!("{fixture} {tag}: {name} stored as {format}"));
                }
                experts += expert as usize;
            }
            if experts == 0 {
                bad.push(format!(
                    "{fixture} {tag}: no expert weight in {described:?}"
                ));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// `--rotate` changes the weights, not the function: on every fixture
/// architecture the rotated model, kept in f32, gives the source's logits
/// (up to the f16 rounding of the rotated weights), has its own LM head and
/// unit norm scales, and records the rotation.
#[test]
fn rotation_keeps_the_function() {
    let t = Tmp::new("rotate");
    for fixture in FIXTURES {
        let c = quantized_closeness(&t, fixture, "rot-f32", &["--rotate", "--keep", ".*=f32"]);
        // f16 rounding: relative 2^-11 per weight.
        assert!(
            c.rel_max < 5e-3 && c.top1 == 1.0 && c.kl < 1e-5,
            "{fixture}: rotated logits differ: {c:?}"
        );
        let out = t.join(&format!("{fixture}-rot-f32"));
        let cfg = read_json(&out.join("config.json"));
        assert_eq!(cfg["tie_word_embeddings"], Value::Bool(false), "{fixture}");
        let qc = read_json(&out.join("quantization_config.json"));
        assert!(qc["rotation"]["seed"].is_u64(), "{fixture}: {qc}");
        let src = open_source(&out).unwrap();
        assert!(src.contains("lm_head.weight"), "{fixture}");
        for n in ["model.norm.weight", "model.layers.1.input_layernorm.weight"] {
            let g = mm_quant::dequantize_ref(&src.tensor(n).unwrap()).unwrap();
            assert!(g.iter().all(|&v| v == 1.0), "{fixture} {n}");
        }
        // The rotation moved the weights.
        let a =
            mm_quant::dequantize_ref(&src.tensor("model.embed_tokens.weight").unwrap()).unwrap();
        let b = open_source(&tiny(fixture)).unwrap();
        let b = mm_quant::dequantize_ref(&b.tensor("model.embed_tokens.weight").unwrap()).unwrap();
        assert!(
            a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-3),
            "{fixture}"
        );
    }
    // Quantized after rotating: still a working model of the same family.
    let c = quantized_closeness(
        &t,
        "llama",
        "rot-int8",
        &["--rotate", "--format", "int8", "--group-size", "32"],
    );
    assert!(c.top1 >= 0.75 && c.kl < 5e-4, "{c:?}");
}

/// Every stored weight decodes to exactly what `quantize_rtn_with` (with
/// the scale rule `search`) makes of the whole source tensor: the
/// block-by-block pipeline changes nothing.
fn assert_matches_rtn(
    src: &dyn mm_formats::WeightSource,
    out: &Path,
    names: &[&str],
    search: mm_quant::ScaleSearch,
) {
    let q = open_source(out).unwrap();
    for name in names {
        let w = q.tensor(name).unwrap();
        let WeightFormat::Mm(fmt) = w.format else {
            panic!("{name} is not quantized: {:?}", w.format)
        };
        let s = src.tensor(name).unwrap();
        let (rows, cols) = s.dims2().unwrap();
        let values = mm_quant::dequantize_ref(&s).unwrap();
        let want = mm_quant::quantize_rtn_with(&values, rows, cols, fmt, search).unwrap();
        assert_eq!(&w.bytes[..], &want.qweight[..], "{name}: codes");
        assert_eq!(
            &w.scales.as_deref().unwrap()[..],
            &want.scales[..],
            "{name}: scales"
        );
        assert_eq!(w.zeros.as_deref(), want.zeros.as_deref(), "{name}: zeros");
    }
}

#[test]
fn pipeline_equals_whole_tensor_rtn() {
    let t = Tmp::new("exact");
    use mm_quant::ScaleSearch;
    for (fixture, fmt, search) in [
        ("llama", "int4-asym", ScaleSearch::MinMax),
        ("qwen2", "int3", ScaleSearch::MinMax),
        ("qwen3", "mxfp4", ScaleSearch::MinMax),
        ("qwen2", "int2-asym", ScaleSearch::Mse),
    ] {
        let out = t.join(&format!("{fixture}-{fmt}"));
        ok(&[
            "quantize",
            tiny(fixture).to_str().unwrap(),
            "--format",
            fmt,
            "--group-size",
            if fmt == "mxfp4" { "32" } else { "64" },
            "--scale-search",
            search.name(),
            "-o",
            out.to_str().unwrap(),
        ]);
        let qc = read_json(&out.join("quantization_config.json"));
        assert_eq!(qc["scale_search"], search.name(), "{qc}");
        let src = open_source(&tiny(fixture)).unwrap();
        let names: Vec<String> = open_source(&out)
            .unwrap()
            .describe()
            .into_iter()
            .filter(|d| d.1.starts_with(fmt))
            .map(|d| d.0)
            .collect();
        assert_eq!(names.len(), 14, "{fixture}: {names:?}");
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_matches_rtn(src.as_ref(), &out, &names, search);
    }
}

#[test]
fn keep_overrides_take_effect() {
    let t = Tmp::new("keep");
    let out = t.join("o");
    let src = tiny("llama");
    ok(&[
        "quantize",
        "-m",
        src.to_str().unwrap(),
        "--format",
        "int4",
        "--group-size",
        "32",
        "--keep",
        "lm_head=f16",
        "--keep",
        ".*down_proj.*=int8",
        "--keep",
        "embed_tokens=nf4/g64",
        "--keep",
        r"layers\.1\.self_attn\.v_proj=int4-asym/per-channel",
        "--keep",
        "post_attention_layernorm=f16",
        "-o",
        out.to_str().unwrap(),
    ]);
    let src = open_source(&out).unwrap();
    let fmt = |n: &str| src.tensor(n).unwrap().format;
    let mm = |s: &str, g| WeightFormat::Mm(mm_quant::MmFormat::parse(s, g).unwrap());
    assert_eq!(fmt("lm_head.weight"), WeightFormat::F16);
    assert_eq!(fmt("model.layers.0.mlp.down_proj.weight"), mm("int8", 32));
    assert_eq!(fmt("model.layers.1.mlp.down_proj.weight"), mm("int8", 32));
    assert_eq!(fmt("model.layers.1.mlp.up_proj.weight"), mm("int4", 32));
    assert_eq!(fmt("model.embed_tokens.weight"), mm("nf4", 64));
    assert_eq!(
        fmt("model.layers.1.self_attn.v_proj.weight"),
        mm("int4-asym", 0)
    );
    assert_eq!(
        fmt("model.layers.0.self_attn.v_proj.weight"),
        mm("int4", 32)
    );
    assert_eq!(
        fmt("model.layers.0.post_attention_layernorm.weight"),
        WeightFormat::F16
    );
    assert_eq!(
        fmt("model.layers.0.input_layernorm.weight"),
        WeightFormat::F32
    );
    let stored = stored_tensors(&out);
    assert!(stored.contains_key("model.layers.1.self_attn.v_proj.zeros"));

    let qc = read_json(&out.join("quantization_config.json"));
    assert_eq!(qc["format"], "int4");
    let ov = qc["overrides"].as_object().unwrap();
    assert_eq!(ov.len(), 4, "{ov:?}");
    assert_eq!(
        ov["model.layers.0.mlp.down_proj.weight"],
        serde_json::json!({"format": "int8", "group_size": 32})
    );
    assert_eq!(
        ov["model.embed_tokens.weight"],
        serde_json::json!({"format": "nf4", "group_size": 64})
    );
    assert_eq!(qc["unquantized"], serde_json::json!(["lm_head.weight"]));
    assert_eq!(qc["keep"].as_array().unwrap().len(), 5);

    // Still a working model.
    let ids = input_ids("llama");
    let (want, vocab) = logits(&tiny("llama"), &ids);
    let (got, _) = logits(&out, &ids);
    let c = closeness(&want, &got, vocab);
    // Mostly int4 with a nf4 embedding: within the int4 bounds above.
    assert!(c.rel_max < 0.6 && c.kl < 0.08, "{c:?}");
}

/// Without a recipe a tied embedding (also the LM head) is stored int8 g128,
/// whatever the default format; a --keep rule puts it back in a float dtype;
/// an untied embedding keeps its source dtype.
#[test]
fn tied_embedding_defaults_to_int8() {
    let t = Tmp::new("tied");
    let mm = |s: &str, g| WeightFormat::Mm(mm_quant::MmFormat::parse(s, g).unwrap());
    let quantize = |fixture: &str, tag: &str, format: &str, extra: &[&str]| {
        let out = t.join(tag);
        let src = tiny(fixture);
        let mut args = vec!["quantize", "-m", src.to_str().unwrap(), "--format", format];
        args.extend(extra);
        args.extend(["-o", out.to_str().unwrap()]);
        ok(&args);
        out
    };
    for format in ["int4", "nf4", "int2-asym"] {
        let out = quantize("llama-mqa-tied", format, format, &[]);
        let src = open_source(&out).unwrap();
        // 64 columns: the group of 128 falls back to 64.
        assert_eq!(
            src.tensor("model.embed_tokens.weight").unwrap().format,
            mm("int8", 64),
            "{format}"
        );
        assert!(
            !src.contains("lm_head.weight"),
            "{format}: the head stays tied"
        );
        let qc = read_json(&out.join("quantization_config.json"));
        assert_eq!(
            qc["overrides"]["model.embed_tokens.weight"],
            serde_json::json!({"format": "int8", "group_size": 64}),
            "{format}"
        );
    }
    let out = quantize(
        "llama-mqa-tied",
        "kept",
        "int4",
        &["--keep", "embed_tokens=f16"],
    );
    let src = open_source(&out).unwrap();
    assert_eq!(
        src.tensor("model.embed_tokens.weight").unwrap().format,
        WeightFormat::F16
    );
    let out = quantize("llama", "untied", "int4", &[]);
    let src = open_source(&out).unwrap();
    assert_eq!(
        src.tensor("model.embed_tokens.weight").unwrap().format,
        WeightFormat::BF16
    );
    assert_eq!(
        src.tensor("lm_head.weight").unwrap().format,
        WeightFormat::BF16
    );
}

#[test]
fn recipes() {
    let t = Tmp::new("recipes");
    let mm = |s: &str, g| WeightFormat::Mm(mm_quant::MmFormat::parse(s, g).unwrap());
    // The fixtures' rows are 64 or 128 long: recipe groups of 128 fall back
    // to 64 on 64-long rows.
    for (recipe, checks) in [
        (
            "speed-4bit",
            vec![
                ("model.layers.0.self_attn.q_proj.weight", mm("int4", 64)),
                ("model.layers.0.mlp.down_proj.weight", mm("int4", 128)),
                ("model.embed_tokens.weight", mm("int8", 64)),
                ("lm_head.weight", mm("int8", 64)),
            ],
        ),
        (
            "balanced-5bit",
            vec![
                ("model.layers.0.self_attn.q_proj.weight", mm("int4", 64)),
                ("model.layers.1.self_attn.v_proj.weight", mm("int8", 64)),
                ("model.layers.1.self_attn.o_proj.weight", mm("int8", 64)),
                ("model.layers.1.mlp.down_proj.weight", mm("int4", 64)),
                ("lm_head.weight", mm("int8", 64)),
            ],
        ),
        (
            "quality-8bit",
            vec![
                ("model.layers.0.mlp.down_proj.weight", mm("int8", 128)),
                ("model.layers.0.mlp.up_proj.weight", mm("int8", 64)),
                ("model.embed_tokens.weight", WeightFormat::BF16),
                ("lm_head.weight", WeightFormat::BF16),
            ],
        ),
        (
            "mixed",
            vec![
                ("model.layers.0.self_attn.k_proj.weight", mm("fp8-e4m3", 64)),
                ("model.layers.0.mlp.down_proj.weight", mm("int8", 128)),
                ("model.layers.1.mlp.down_proj.weight", mm("int8", 128)),
                ("model.layers.1.mlp.gate_proj.weight", mm("int4", 64)),
                ("model.embed_tokens.weight", mm("int8", 64)),
            ],
        ),
    ] {
        let out = t.join(recipe);
        let err = ok(&[
            "quantize",
            tiny("llama").to_str().unwrap(),
            "--recipe",
            recipe,
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(err.contains("smaller group"), "{recipe}: {err}");
        let src = open_source(&out).unwrap();
        for (name, want) in checks {
            assert_eq!(src.tensor(name).unwrap().format, want, "{recipe} {name}");
        }
        let qc = read_json(&out.join("quantization_config.json"));
        assert_eq!(qc["recipe"], recipe);
        let ids = input_ids("llama");
        let (want, vocab) = logits(&tiny("llama"), &ids);
        let (got, _) = logits(&out, &ids);
        let c = closeness(&want, &got, vocab);
        eprintln!("recipe {recipe:14} {c:?}");
        // Mostly 4-bit recipes: the int4 bounds of quantized_logits_are_close;
        // quality-8bit: the int8 ones.
        let (rel, kl) = if recipe == "quality-8bit" {
            (0.05, 5e-4)
        } else {
            (0.6, 0.08)
        };
        assert!(c.rel_max < rel && c.kl < kl, "{recipe}: {c:?}");
    }
}

#[test]
fn force_replaces_only_a_complete_output() {
    let t = Tmp::new("force");
    let out = t.join("o");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("marker"), b"old").unwrap();
    let o = out.to_str().unwrap();
    let src = tiny("qwen2");
    let s = src.to_str().unwrap();
    // Without --force: refused, untouched.
    let e = fails(&["quantize", s, "--format", "int8", "-o", o]);
    assert!(e.contains("already exists") && e.contains("--force"), "{e}");
    assert!(out.join("marker").exists());
    // With --force but failing input: untouched, no leftovers.
    let e = fails(&[
        "quantize",
        s,
        "--format",
        "int8",
        "--group-size",
        "128",
        "--force",
        "-o",
        o,
    ]);
    assert!(e.contains("model.layers.0.mlp.gate_proj.weight"), "{e}");
    assert!(out.join("marker").exists());
    // With --force: replaced.
    ok(&["quantize", s, "--format", "int8", "--force", "-o", o]);
    assert!(!out.join("marker").exists());
    assert!(out.join("quantization_config.json").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&t.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    // The source can never be the output.
    let copy = t.join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), copy.join(f)).unwrap();
    }
    let c = copy.to_str().unwrap();
    let e = fails(&["quantize", c, "--format", "int8", "--force", "-o", c]);
    assert!(e.contains("source"), "{e}");
    assert!(copy.join("model.safetensors").exists());
}

/// Runs a failing quantize of the llama fixture into a fresh OUT and checks
/// nothing is left behind; returns stderr.
fn bad(t: &Tmp, extra: &[&str]) -> String {
    let out = t.join("out");
    let src = tiny("llama");
    let mut a = vec![
        "quantize",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    a.extend_from_slice(extra);
    let e = fails(&a);
    assert_nothing_written(&out);
    e
}

#[test]
fn bad_formats_and_groups() {
    let t = Tmp::new("badfmt");
    let e = bad(&t, &["--format", "int5"]);
    assert!(
        e.contains("int5") && e.contains("int4") && e.contains("mxfp4"),
        "{e}"
    );
    let e = bad(&t, &["--format", "int4", "--group-size", "96"]);
    assert!(e.contains("96") && e.contains("128"), "{e}");
    let e = bad(&t, &["--format", "mxfp4", "--group-size", "64"]);
    assert!(e.contains("mxfp4") && e.contains("32"), "{e}");
    // An explicit group that does not divide a row names the tensor.
    let e = bad(&t, &["--format", "int4", "--group-size", "128"]);
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight")
            && e.contains("[128, 64]")
            && e.contains("not divisible")
            && e.contains("--group-size 64"),
        "{e}"
    );
    let e = bad(&t, &["--keep", "lm_head=int4/g128"]);
    assert!(e.contains("lm_head.weight") && e.contains("64"), "{e}");
    let e = bad(&t, &["--keep", "lm_head=q4_k"]);
    assert!(e.contains("q4_k") && e.contains("f16"), "{e}");
    let e = bad(&t, &["--keep", "lm_head"]);
    assert!(e.contains("REGEX=FORMAT"), "{e}");
    let e = bad(&t, &["--keep", "(lm=f16"]);
    assert!(e.contains("regex"), "{e}");
    let e = bad(&t, &["--keep", "no_such_tensor=int8"]);
    assert!(
        e.contains("no_such_tensor") && e.contains("matches no tensor"),
        "{e}"
    );
    // A quantizing rule that only matches 1-D tensors matches nothing.
    let e = bad(&t, &["--keep", "input_layernorm=int8"]);
    assert!(e.contains("matches no tensor") && e.contains("1-D"), "{e}");
    let out = t.join("out");
    let r = run(&[
        "quantize",
        tiny("llama").to_str().unwrap(),
        "--shard-size",
        "2XB",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("unknown unit"));
    assert_nothing_written(&out);
    // --recipe conflicts with --format (a usage error: clap's exit code 2).
    let r = run(&[
        "quantize",
        tiny("llama").to_str().unwrap(),
        "--recipe",
        "mixed",
        "--format",
        "int8",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("cannot be used with"));
    assert_nothing_written(&out);
}

/// Writes a safetensors file of BF16 tensors (values all 0.5).
fn bf16_safetensors(path: &Path, tensors: &[(&str, Vec<usize>)]) {
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for (name, shape) in tensors {
        let len = shape.iter().product::<usize>() * 2;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [off, off + len]}),
        );
        off += len;
    }
    let h = Value::Object(header).to_string();
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(h.as_bytes());
    for _ in 0..off / 2 {
        bytes.extend_from_slice(&half::bf16::from_f32(0.5).to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn bad_shapes_and_sources() {
    let t = Tmp::new("badshape");
    // A projection whose rows (36 long) no 3-bit per-channel layout takes.
    let src = t.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::copy(tiny("llama").join("config.json"), src.join("config.json")).unwrap();
    std::fs::copy(
        tiny("llama").join("model.safetensors"),
        src.join("a.safetensors"),
    )
    .unwrap();
    bf16_safetensors(
        &src.join("b.safetensors"),
        &[("model.layers.0.mlp.odd_proj.weight", vec![4, 36])],
    );
    let out = t.join("out");
    let e = fails(&[
        "quantize",
        src.to_str().unwrap(),
        "--format",
        "int3",
        "--group-size",
        "0",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(
        e.contains("odd_proj") && e.contains("multiple of 8") && e.contains("[4, 36]"),
        "{e}"
    );
    assert_nothing_written(&out);
    // With the default group (an upper bound) it falls back to per-channel.
    ok(&[
        "quantize",
        src.to_str().unwrap(),
        "--format",
        "int4",
        "-o",
        out.to_str().unwrap(),
    ]);
    let s = open_source(&out).unwrap();
    assert_eq!(
        s.tensor("model.layers.0.mlp.odd_proj.weight")
            .unwrap()
            .format,
        WeightFormat::Mm(mm_quant::MmFormat::parse("int4", 0).unwrap())
    );
    std::fs::remove_dir_all(&out).unwrap();

    // Sources that are not models.
    let e = fails(&[
        "quantize",
        "/nonexistent/model",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(e.contains("/nonexistent/model"), "{e}");
    let empty = t.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = fails(&[
        "quantize",
        empty.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(e.contains("config.json"), "{e}");
    assert_nothing_written(&out);
}

#[test]
fn gptq_needs_calibration() {
    let t = Tmp::new("gptq");
    let e = bad(&t, &["--method", "gptq"]);
    assert!(e.contains("--calib"), "{e}");
    let e = bad(&t, &["--calib", "/etc/hostname"]);
    assert!(e.contains("--method gptq"), "{e}");
    let e = bad(&t, &["--refit-scales"]);
    assert!(e.contains("--method gptq"), "{e}");
    let e = bad(&t, &["--propagate-error", "0.5"]);
    assert!(e.contains("--method gptq"), "{e}");
    let e = bad(&t, &["--tune", "2"]);
    assert!(e.contains("--method gptq"), "{e}");
    let gptq = ["--method", "gptq", "--calib", "/etc/hostname"];
    let e = bad(
        &t,
        &[&gptq[..], &["--tune", "2", "--tune-lr", "nan"]].concat(),
    );
    assert!(e.contains("--tune-lr") && e.contains("finite"), "{e}");
    let e = bad(
        &t,
        &[&gptq[..], &["--tune", "2", "--calib-windows", "1"]].concat(),
    );
    assert!(e.contains("--calib-windows 1"), "{e}");
    let e = bad(&t, &[&gptq[..], &["--calib-windows", "0"]].concat());
    assert!(e.contains("--calib-windows 0"), "{e}");
    for v in ["1.5", "-0.1", "nan"] {
        let e = bad(
            &t,
            &[
                "--method",
                "gptq",
                "--calib",
                "/etc/hostname",
                "--propagate-error",
                v,
            ],
        );
        assert!(e.contains("outside [0, 1]"), "{v}: {e}");
    }
    let e = bad(
        &t,
        &["--method", "gptq", "--calib", "/nonexistent/calib.txt"],
    );
    assert!(e.contains("/nonexistent/calib.txt"), "{e}");
    // A model directory with a tokenizer, and too little text.
    let src = t.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny("llama").join(f), src.join(f)).unwrap();
    }
    let tok =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer/smollm2-hf");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tok.join(f), src.join(f)).unwrap();
    }
    let calib = t.join("calib.txt");
    std::fs::write(&calib, "The capital of France is Paris. ".repeat(10)).unwrap();
    let out = t.join("out");
    let e = fails(&[
        "quantize",
        src.to_str().unwrap(),
        "--method",
        "gptq",
        "--calib",
        calib.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(e.contains("too short") && e.contains("2048"), "{e}");
    assert_nothing_written(&out);
}

/// `--method gptq` end to end on the real SmolLM2: layers 0 and 1 in
/// int3-asym (the rest kept F16, so sequential calibration stops after layer
/// 1), calibrated on the license texts docs/QUALITY.md uses. The GPTQ model's logits on the
/// held-out text are closer to the source's than the RTN model's, and its
/// codes differ from RTN's. Measured on 384 tokens of the GPL, GPTQ
/// act-order: KL 0.030 with its defaults (Hessian-weighted scale search,
/// error propagation 0.5 with the residual correction), 0.062 with min/max
/// scales, 0.064 without error propagation; RTN 0.173. Top-1 92.7%, 89.8%,
/// 89.8%, 79.7%. The bounds ask for 0.5× and 0.6× RTN, the search below
/// 0.95× min/max, and error propagation below 0.7× without it.
#[test]
fn gptq_pipeline_beats_rtn_on_smollm2() {
    let Some(gguf) = mm_engine::resolve::smollm2_for_tests() else {
        return;
    };
    let t = Tmp::new("gptq-smol");
    let calib = license_calib(&t);
    let quantize_as = |tag: &str, fmt: &str, group: &str, extra: &[&str]| -> PathBuf {
        let out = t.join(tag);
        let mut a = vec![
            "quantize",
            gguf.to_str().unwrap(),
            "--format",
            fmt,
            "--group-size",
            group,
            "--keep",
            r"^model\.layers\.([2-9]|[12][0-9])\..*=f16",
            // Only the two layers are measured: the tied embedding stays f16.
            "--keep",
            "embed_tokens=f16",
            "-o",
            out.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        ok(&a);
        out
    };
    let quantize = |tag: &str, extra: &[&str]| quantize_as(tag, "int3-asym", "64", extra);
    let rtn = quantize("rtn", &[]);
    let gptq = quantize(
        "gptq",
        &[
            "--method",
            "gptq",
            "--act-order",
            "--calib",
            calib.to_str().unwrap(),
        ],
    );
    let reference = read_json(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/smollm2/reference.json"),
    );
    // Held-out text: 384 tokens of the GPL (docs/QUALITY.md's evaluation
    // text, not calibrated on) where the system has it, else the fixture
    // prompt.
    let ids = held_out_ids(&gguf, &reference);
    let (want, vocab) = logits(&gguf, &ids);
    let c_rtn = closeness(&want, &logits(&rtn, &ids).0, vocab);
    let c_gptq = closeness(&want, &logits(&gptq, &ids).0, vocab);
    let minmax = quantize(
        "gptq-minmax",
        &[
            "--method",
            "gptq",
            "--act-order",
            "--scale-search",
            "minmax",
            "--calib",
            calib.to_str().unwrap(),
        ],
    );
    let c_minmax = closeness(&want, &logits(&minmax, &ids).0, vocab);
    let plain = quantize(
        "gptq-plain",
        &[
            "--method",
            "gptq",
            "--act-order",
            "--propagate-error",
            "0",
            "--calib",
            calib.to_str().unwrap(),
        ],
    );
    let c_plain = closeness(&want, &logits(&plain, &ids).0, vocab);
    eprintln!(
        "2 layers int3-asym/g64: RTN {c_rtn:?}, GPTQ {c_gptq:?}, GPTQ min/max {c_minmax:?}, \
         GPTQ without error propagation {c_plain:?}"
    );
    assert!(
        c_gptq.kl < 0.5 * c_rtn.kl && c_minmax.kl < 0.6 * c_rtn.kl,
        "GPTQ {c_gptq:?}, min/max {c_minmax:?} vs RTN {c_rtn:?}"
    );
    assert!(
        c_gptq.kl < 0.95 * c_minmax.kl,
        "searched {c_gptq:?} vs min/max {c_minmax:?}"
    );
    assert!(
        c_gptq.kl < 0.7 * c_plain.kl,
        "error propagation {c_gptq:?} vs without {c_plain:?}"
    );
    let stored = |dir: &Path| {
        mm_formats::SafetensorsSet::open_dir(dir)
            .unwrap()
            .raw("model.layers.1.mlp.down_proj.qweight")
            .unwrap()
            .2
            .to_vec()
    };
    assert_ne!(stored(&rtn), stored(&gptq));
    let qc = read_json(&gptq.join("quantization_config.json"));
    assert_eq!(qc["method"], "gptq", "{qc}");
    assert_eq!(qc["scale_search"], "auto", "{qc}");
    assert_eq!(qc["propagate_error"], 0.5, "{qc}");
    assert_eq!(qc["propagate_residual"], true, "{qc}");
    let qc = read_json(&plain.join("quantization_config.json"));
    assert_eq!(qc["propagate_error"], 0.0, "{qc}");
    assert_eq!(qc["propagate_residual"], false, "{qc}");
    // Block-wise tuning of the two GPTQ layers' scales, at 2 bits where it
    // is meant to help.
    let gptq_args = [
        "--method",
        "gptq",
        "--act-order",
        "--calib",
        calib.to_str().unwrap(),
    ];
    let i2 = quantize_as("i2", "int2-asym", "32", &gptq_args);
    let tuned = quantize_as(
        "i2-tuned",
        "int2-asym",
        "32",
        &[&gptq_args[..], &["--tune", "3"]].concat(),
    );
    let c_i2 = closeness(&want, &logits(&i2, &ids).0, vocab);
    let c_tuned = closeness(&want, &logits(&tuned, &ids).0, vocab);
    eprintln!("2 layers int2-asym/g32: GPTQ {c_i2:?}, GPTQ + block-wise tuning {c_tuned:?}");
    assert!(
        c_tuned.kl < TUNED_KL_RATIO * c_i2.kl,
        "tuned {c_tuned:?} vs GPTQ {c_i2:?}"
    );
    let qc = read_json(&tuned.join("quantization_config.json"));
    assert_eq!(qc["tune"]["epochs"], 3, "{qc}");
    assert_ne!(stored_scales(&tuned), stored_scales(&i2));
}

/// Bound on tuned / untuned KL in `gptq_pipeline_beats_rtn_on_smollm2`.
const TUNED_KL_RATIO: f32 = 1.0;

fn stored_scales(dir: &Path) -> Vec<u8> {
    mm_formats::SafetensorsSet::open_dir(dir)
        .unwrap()
        .raw("model.layers.0.mlp.down_proj.scales")
        .unwrap()
        .2
        .to_vec()
}

/// The real SmolLM2 GGUF (Q4_1), when present: GGUF → HF names, config and
/// tokenizer; the int8 model's logits against the GGUF model's.
#[test]
fn smollm2_gguf() {
    let Some(gguf) = mm_engine::resolve::smollm2_for_tests() else {
        return;
    };
    let gguf = gguf.as_path();
    let t = Tmp::new("smol");
    let out = t.join("smol-int8");
    ok(&[
        "quantize",
        gguf.to_str().unwrap(),
        "--format",
        "int8",
        "--group-size",
        "64",
        "-o",
        out.to_str().unwrap(),
    ]);
    let g = open_source(gguf).unwrap();
    let q = open_source(&out).unwrap();
    assert_eq!(g.config(), q.config(), "config.json does not round-trip");
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    let stored = stored_tensors(&out);
    assert!(stored.contains_key("model.layers.29.self_attn.q_proj.qweight"));
    // The tied embedding (the LM head) is int8 g128 by default; 576 columns
    // fall back to groups of 64.
    assert_eq!(stored["model.embed_tokens.qweight"].0, "U8");
    assert_eq!(stored["model.embed_tokens.scales"].1, vec![49152, 9]);
    assert!(!stored.contains_key("model.embed_tokens.weight"));
    assert!(!stored.keys().any(|k| k.starts_with("blk.")));

    // The exported tokenizer encodes and renders chats as the GGUF's does.
    let tg = mm_engine::tokenizer::load_for(gguf, g.as_ref()).unwrap();
    let tq = mm_engine::tokenizer::Tokenizer::from_hf_dir(&out).unwrap();
    for text in [
        "The capital of France is",
        "héllo  wörld\n\t<|im_start|>x",
        "1234567 tokens 🙂",
    ] {
        assert_eq!(
            tg.encode(text, true).unwrap(),
            tq.encode(text, true).unwrap(),
            "{text:?}"
        );
    }
    assert_eq!(tg.eos_ids(), tq.eos_ids());
    assert_eq!(tg.bos_id(), tq.bos_id());
    let chat = [mm_engine::tokenizer::ChatMessage::new("user", "Hi")];
    assert_eq!(
        tg.render_chat(&chat, true).unwrap(),
        tq.render_chat(&chat, true).unwrap()
    );

    // The chat prompt of the SmolLM2 fixture: 37 tokens.
    let reference = read_json(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/smollm2/reference.json"),
    );
    let ids: Vec<u32> = reference["logits"][1]["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let (want, vocab) = logits(gguf, &ids);
    let (got, _) = logits(&out, &ids);
    let c = closeness(&want, &got, vocab);
    eprintln!("smollm2 Q4_1 -> int8/g64: {c:?}");
    // Measured: rel 0.041, top-1 35/37, KL 0.0035. The two flips are at
    // positions whose reference top-1/top-2 margins are 0.04 and 0.08.
    assert!(c.rel_max < 0.08 && c.top1 >= 0.9 && c.kl < 0.01, "{c:?}");

    // int4 g128 (g64 where rows are 576 long).
    let out4 = t.join("smol-int4");
    ok(&[
        "quantize",
        gguf.to_str().unwrap(),
        "--format",
        "int4",
        "--group-size",
        "128",
        "--group-fallback",
        "-o",
        out4.to_str().unwrap(),
    ]);
    // Through the GGUF mapping (q/k rows unpermuted) and the group
    // fallback, the codes are exactly RTN's of the source tensors.
    assert_matches_rtn(
        g.as_ref(),
        &out4,
        &[
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.7.self_attn.k_proj.weight",
            "model.layers.29.mlp.down_proj.weight",
        ],
        mm_quant::ScaleSearch::MinMax,
    );
    let (got, _) = logits(&out4, &ids);
    let c = closeness(&want, &got, vocab);
    eprintln!("smollm2 Q4_1 -> int4/g128: {c:?}");
    // Measured: rel 0.51, top-1 21/37, KL 1.16. Re-quantizing a Q4_1 model
    // (asymmetric 16-level grids per 32 weights) onto symmetric int4 grids
    // adds an error as large as Q4_1's own (the grids do not line up), and
    // a 135 M model is very sensitive to it; int4-asym g32, the closest
    // grid, still measures KL 0.75. The bound separates int4 from a
    // broken pipeline or fewer bits (int3 g32 measures KL 3.1, int2 14).
    assert!(c.rel_max < 0.8 && c.top1 >= 0.4 && c.kl < 2.0, "{c:?}");
}
