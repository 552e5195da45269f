//! Helpers shared by the `quantize` CLI tests: running the binary, scratch
//! directories, the tiny fixtures, logits and their closeness.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use mm_backend_cpu::CpuBackend;
use mm_core::Device;
use mm_formats::open_source;
use mm_models::load_model;
use serde_json::Value;

/// The dense tiny fixtures (every attention and RoPE variant).
pub const DENSE_FIXTURES: [&str; 7] = [
    "llama",
    "llama-mqa-tied",
    "llama3-rope",
    "llama-linear-rope",
    "mistral",
    "qwen2",
    "qwen3",
];

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_metal-marlin"))
}

pub fn tiny(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(name)
}

/// A scratch directory, removed on drop.
pub struct Tmp(pub PathBuf);

impl Tmp {
    pub fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("mm-quantize-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Tmp(d)
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(args: &[&str]) -> Output {
    bin()
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

/// Runs the CLI, expects success, returns stderr.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "args {args:?} failed: {err}");
    err
}

/// Runs the CLI, expects exit 1 with an error line and no panic.
pub fn fails(args: &[&str]) -> String {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "args {args:?}: expected exit 1: {err}"
    );
    assert!(!err.contains("panicked"), "args {args:?} panicked: {err}");
    assert!(
        err.contains("error:"),
        "args {args:?}: no error line: {err}"
    );
    err
}

/// Nothing named like `out` (or its temporary siblings) exists.
pub fn assert_nothing_written(out: &Path) {
    assert!(!out.exists(), "{} was written", out.display());
    let name = out.file_name().unwrap().to_string_lossy().to_string();
    for e in std::fs::read_dir(out.parent().unwrap()).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().to_string();
        assert!(!n.starts_with(&format!("{name}.")), "leftover {n}");
    }
}

pub fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The reference-precision CPU backend (f32 activations), so that logit
/// comparisons measure the quantization of the weights alone, not the
/// kernels' 8-bit activations.
pub fn cpu() -> Device {
    let b: Arc<dyn mm_core::Backend> = Arc::new(CpuBackend::exact());
    Device::new(b.clone(), b)
}

pub fn input_ids(fixture: &str) -> Vec<u32> {
    read_json(&tiny(fixture).join("reference.json"))["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Logits `[ids, vocab]` of the model in `dir`, every position.
pub fn logits(dir: &Path, ids: &[u32]) -> (Vec<f32>, usize) {
    let src = open_source(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let model = load_model(src.as_ref(), &cpu(), &|_, _| {}).unwrap();
    let mut cache = model.new_cache(ids.len()).unwrap();
    let t = model.forward(ids, &mut cache, true).unwrap();
    (t.to_vec().unwrap(), src.config().vocab_size)
}

/// How far quantized logits are from the reference ones.
#[derive(Debug, Clone, Copy)]
pub struct Closeness {
    /// max |Δlogit| / max |logit|.
    pub rel_max: f32,
    /// Fraction of positions whose argmax agrees.
    pub top1: f32,
    /// Mean KL(p_ref ‖ p_quant) over positions, in nats.
    pub kl: f32,
}

pub fn softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

pub fn argmax(x: &[f32]) -> usize {
    (0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b })
}

pub fn closeness(reference: &[f32], got: &[f32], vocab: usize) -> Closeness {
    assert_eq!(reference.len(), got.len());
    let max_ref = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_err = reference
        .iter()
        .zip(got)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let rows = reference.len() / vocab;
    let (mut agree, mut kl) = (0, 0f64);
    for (r, g) in reference.chunks(vocab).zip(got.chunks(vocab)) {
        agree += (argmax(r) == argmax(g)) as usize;
        let (p, q) = (softmax(r), softmax(g));
        kl += p
            .iter()
            .zip(&q)
            .map(|(a, b)| if *a > 0.0 { a * (a / b).ln() } else { 0.0 })
            .sum::<f64>();
    }
    Closeness {
        rel_max: max_err / max_ref,
        top1: agree as f32 / rows as f32,
        kl: (kl / rows as f64) as f32,
    }
}

/// Every `model-*.safetensors` shard's tensors: name → (dtype, shape).
pub fn stored_tensors(dir: &Path) -> std::collections::BTreeMap<String, (String, Vec<usize>)> {
    let set = mm_formats::SafetensorsSet::open_dir(dir).unwrap();
    set.names()
        .map(|n| {
            let (d, s) = set.info(n).unwrap();
            (n.to_string(), (d, s.to_vec()))
        })
        .collect()
}

/// A copy of tiny fixture `fixture` in `dir` with a byte-level tokenizer
/// (the 256 bytes as tokens 0..255, no merges: GPT-2's byte-to-character
/// map), so that calibration text tokenizes inside the fixtures'
/// vocabulary of 320.
pub fn with_byte_tokenizer(fixture: &str, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "model.safetensors", "reference.json"] {
        std::fs::copy(tiny(fixture).join(f), dir.join(f)).unwrap();
    }
    // GPT-2's bytes_to_unicode.
    let mut printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let vocab: serde_json::Map<String, Value> = printable
        .iter()
        .zip(&chars)
        .map(|(&b, &c)| (char::from_u32(c).unwrap().to_string(), Value::from(b)))
        .collect();
    let tok = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    dir.to_path_buf()
}

/// Quantizes `fixture` with `args` into a fresh directory of `t` and compares its
/// logits with the unquantized model's.
pub fn quantized_closeness(t: &Tmp, fixture: &str, tag: &str, args: &[&str]) -> Closeness {
    let out = t.join(&format!("{fixture}-{tag}"));
    let src = tiny(fixture);
    let mut a = vec![
        "quantize",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    a.extend_from_slice(args);
    ok(&a);
    let ids = input_ids(fixture);
    let (want, vocab) = logits(&src, &ids);
    let (got, _) = logits(&out, &ids);
    let c = closeness(&want, &got, vocab);
    eprintln!("{fixture:18} {tag:12} {c:?}");
    c
}

/// The calibration text of docs/QUALITY.md (Apache-2.0, MPL-2.0, GFDL-1.3,
/// Artistic from /usr/share/common-licenses) where the system has it (it
/// never changes), else this repository's docs, written to `t/calib.txt`.
pub fn license_calib(t: &Tmp) -> PathBuf {
    let lic = Path::new("/usr/share/common-licenses");
    let (dir, files) = if lic.join("Apache-2.0").exists() {
        (
            lic.to_path_buf(),
            ["Apache-2.0", "MPL-2.0", "GFDL-1.3", "Artistic"],
        )
    } else {
        (
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs"),
            ["GPTQ.md", "QUANTIZE.md", "FORMAT.md", "BENCHMARKS.md"],
        )
    };
    let text: String = files
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
        .collect();
    let calib = t.join("calib.txt");
    std::fs::write(&calib, text).unwrap();
    calib
}

/// Held-out text for the SmolLM2 `gguf`: 384 tokens of the GPL
/// (docs/QUALITY.md's evaluation text) where the system has it, else the
/// second prompt of the SmolLM2 fixture `reference`.
pub fn held_out_ids(gguf: &Path, reference: &Value) -> Vec<u32> {
    match std::fs::read_to_string("/usr/share/common-licenses/GPL-3") {
        Ok(text) => {
            let src = open_source(gguf).unwrap();
            let tok = mm_engine::tokenizer::load_for(gguf, src.as_ref()).unwrap();
            tok.encode(&text, false).unwrap()[..384].to_vec()
        }
        Err(_) => reference["logits"][1]["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect(),
    }
}
