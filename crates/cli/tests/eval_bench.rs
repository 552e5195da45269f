//! `eval` and `bench` on the tiny fixture models. The fixtures have no
//! tokenizer, so eval tests copy a model into a temporary directory and give
//! it a WordLevel `tokenizer.json` whose words `w3`..`w319` are ids 3..319,
//! which makes the token ids of a test text known without tokenizing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use serde_json::Value;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_metal-marlin"));
    c.env("HF_HUB_OFFLINE", "1").args(["--threads", "2"]);
    c
}

fn tiny(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(name)
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mm-evalbench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A WordLevel tokenizer: `<unk>`, `<s>`, `</s>` are 0..2, `w{i}` is `i`
/// for `i` in 3..size, and `id_of` maps a word's number to its id.
fn tokenizer_json(size: u32, id_of: &dyn Fn(u32) -> u32) -> String {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), 0.into());
    vocab.insert("<s>".into(), 1.into());
    vocab.insert("</s>".into(), 2.into());
    for i in 3..size {
        vocab.insert(format!("w{i}"), id_of(i).into());
    }
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
    .to_string()
}

/// A copy of fixture `name` in `dir` with the given tokenizer.json.
fn model_with_tokenizer(name: &str, dir: &Path, tokenizer: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(tiny(name).join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("tokenizer.json"), tokenizer).unwrap();
    dir.to_path_buf()
}

fn identity_tokenizer() -> String {
    tokenizer_json(320, &|i| i)
}

/// Pseudo-random ids in 3..320 and the text of their words.
fn text_ids(n: usize) -> (String, Vec<u32>) {
    let ids: Vec<u32> = (0..n as u32)
        .map(|i| 3 + (i * 7919 + i * i * 31 + 17) % 317)
        .collect();
    let words: Vec<String> = ids.iter().map(|i| format!("w{i}")).collect();
    (words.join(" "), ids)
}

fn write_text(dir: &Path, n: usize) -> (PathBuf, Vec<u32>) {
    let (text, ids) = text_ids(n);
    let f = dir.join("text.txt");
    std::fs::write(&f, text).unwrap();
    (f, ids)
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn ok_json(args: &[&str]) -> Value {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "args {args:?} failed: {err}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.trim().lines().count(), 1, "one JSON line: {stdout}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Expects exit code 1 with an error line and no panic; returns stderr.
fn fails(args: &[&str]) -> String {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "args {args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("error:"), "{err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn eval_against_itself_has_zero_kld_and_full_agreement() {
    let d = tmpdir("self");
    let m = model_with_tokenizer("qwen2", &d.join("m"), &identity_tokenizer());
    let (text, _) = write_text(&d, 200);
    let v = ok_json(&[
        "eval",
        "-m",
        s(&m),
        "--text",
        s(&text),
        "--ctx",
        "32",
        "--ref",
        s(&m),
        "--json",
    ]);
    for k in ["ppl", "kld", "top1", "tokens", "ref_ppl", "chunks", "ctx"] {
        assert!(v.get(k).is_some(), "missing {k}: {v}");
    }
    let kld = v["kld"].as_f64().unwrap();
    assert!(kld.abs() <= 1e-9, "kld {kld}");
    assert_eq!(v["top1"].as_f64(), Some(1.0));
    let (ppl, ref_ppl) = (v["ppl"].as_f64().unwrap(), v["ref_ppl"].as_f64().unwrap());
    assert!(ppl > 1.0 && (ppl - ref_ppl).abs() <= 1e-9 * ppl, "{v}");
    assert_eq!(v["chunks"].as_u64(), Some(200 / 32));
    assert_eq!(v["ctx"].as_u64(), Some(32));
    assert_eq!(v["tokens"].as_u64(), Some(6 * (32 - 1 - 16)));
}

#[test]
fn eval_perplexity_matches_an_independent_forward() {
    let d = tmpdir("ppl");
    let m = model_with_tokenizer("llama", &d.join("m"), &identity_tokenizer());
    let (text, ids) = write_text(&d, 100);
    let v = ok_json(&[
        "eval",
        "-m",
        s(&m),
        "--text",
        s(&text),
        "--ctx",
        "40",
        "--max-chunks",
        "1",
        "--json",
    ]);
    assert!(
        v["kld"].is_null() && v["top1"].is_null() && v["ref_ppl"].is_null(),
        "{v}"
    );
    assert_eq!(
        (v["chunks"].as_u64(), v["tokens"].as_u64()),
        (Some(1), Some(19))
    );

    // One forward of the whole window, scored at positions 20..39.
    let src = mm_formats::open_source(&m).unwrap();
    let cpu: Arc<dyn mm_core::Backend> = Arc::new(mm_backend_cpu::CpuBackend::new());
    let dev = mm_core::Device::new(cpu.clone(), cpu);
    let model = mm_models::load_model(src.as_ref(), &dev, &|_, _| {}).unwrap();
    let window = &ids[..40];
    let mut cache = model.new_cache(40).unwrap();
    let logits = model
        .forward(window, &mut cache, true)
        .unwrap()
        .to_vec()
        .unwrap();
    let vocab = 320;
    let mut nll = 0.0f64;
    for p in 20..39 {
        let row = &logits[p * vocab..(p + 1) * vocab];
        let max = row.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x as f64));
        let lse = max
            + row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln();
        nll += lse - row[window[p + 1] as usize] as f64;
    }
    let want = (nll / 19.0).exp();
    let got = v["ppl"].as_f64().unwrap();
    assert!((got - want).abs() <= 1e-4 * want, "ppl {got} vs {want}");
}

#[test]
fn eval_human_output_and_progress_stay_apart() {
    let d = tmpdir("human");
    let m = model_with_tokenizer("mistral", &d.join("m"), &identity_tokenizer());
    let (text, _) = write_text(&d, 64);
    let out = run(&["eval", "-m", s(&m), "--text", s(&text), "--ctx", "16"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("PPL:") && stdout.contains("scored positions 8..15"),
        "{stdout}"
    );
    assert!(!stdout.contains("KLD"), "{stdout}");
}

#[test]
fn eval_text_too_short_says_how_many_tokens() {
    let d = tmpdir("short");
    let m = model_with_tokenizer("llama", &d.join("m"), &identity_tokenizer());
    let (text, _) = write_text(&d, 10);
    let e = fails(&["eval", "-m", s(&m), "--text", s(&text), "--ctx", "32"]);
    assert!(e.contains("10 tokens") && e.contains("32"), "{e}");
    let e = fails(&["eval", "-m", s(&m), "--text", s(&text), "--ctx", "2"]);
    assert!(e.contains("--ctx"), "{e}");
    let e = fails(&["eval", "-m", s(&m), "--text", s(&text), "--ctx", "100000"]);
    assert!(e.contains("context length 512"), "{e}");
    let e = fails(&["eval", "-m", s(&m), "--text", s(&d.join("missing.txt"))]);
    assert!(e.contains("missing.txt"), "{e}");
    let bin_file = d.join("bin.txt");
    std::fs::write(&bin_file, [0xff, 0xfe, 0x00]).unwrap();
    let e = fails(&["eval", "-m", s(&m), "--text", s(&bin_file)]);
    assert!(e.contains("UTF-8"), "{e}");
}

/// `tiny/llama` with its vocabulary cut to the first `vocab` rows.
fn smaller_vocab_model(dir: &Path, vocab: usize) -> PathBuf {
    use safetensors::tensor::TensorView;
    std::fs::create_dir_all(dir).unwrap();
    let bytes = std::fs::read(tiny("llama").join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut parts = Vec::new();
    for (name, t) in st.tensors() {
        let mut shape = t.shape().to_vec();
        let mut data = t.data().to_vec();
        if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
            data.truncate(data.len() / shape[0] * vocab);
            shape[0] = vocab;
        }
        parts.push((name, t.dtype(), shape, data));
    }
    let views: Vec<(String, TensorView)> = parts
        .iter()
        .map(|(n, dt, sh, d)| (n.clone(), TensorView::new(*dt, sh.clone(), d).unwrap()))
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(tiny("llama").join("config.json"))
        .unwrap()
        .replace("\"vocab_size\": 320", &format!("\"vocab_size\": {vocab}"));
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        tokenizer_json(vocab as u32, &|i| i),
    )
    .unwrap();
    dir.to_path_buf()
}

#[test]
fn eval_rejects_a_reference_with_another_vocabulary() {
    let d = tmpdir("refvocab");
    let m = model_with_tokenizer("llama", &d.join("m"), &identity_tokenizer());
    let (text, _) = write_text(&d, 100);
    let small = smaller_vocab_model(&d.join("small"), 256);
    let e = fails(&[
        "eval",
        "-m",
        s(&m),
        "--text",
        s(&text),
        "--ctx",
        "16",
        "--ref",
        s(&small),
    ]);
    assert!(
        e.contains("320") && e.contains("256") && e.contains("same tokenizer"),
        "{e}"
    );

    // Same model vocabulary, but the tokenizers differ in size ...
    let fewer = model_with_tokenizer("qwen2", &d.join("fewer"), &tokenizer_json(300, &|i| i));
    let e = fails(&[
        "eval",
        "-m",
        s(&m),
        "--text",
        s(&text),
        "--ctx",
        "16",
        "--ref",
        s(&fewer),
    ]);
    assert!(e.contains("tokenizer") && e.contains("300"), "{e}");
    // ... or in how they split the text.
    let swapped = model_with_tokenizer(
        "qwen2",
        &d.join("swapped"),
        &tokenizer_json(320, &|i| 322 - i),
    );
    let e = fails(&[
        "eval",
        "-m",
        s(&m),
        "--text",
        s(&text),
        "--ctx",
        "16",
        "--ref",
        s(&swapped),
    ]);
    assert!(e.contains("split the text differently"), "{e}");
}

#[test]
fn bench_json_has_positive_numbers() {
    let m = tiny("llama");
    let v = ok_json(&[
        "bench",
        "-m",
        s(&m),
        "--prompt-tokens",
        "16",
        "--gen-tokens",
        "8",
        "--repetitions",
        "2",
        "--json",
    ]);
    for k in [
        "prefill_tok_s",
        "decode_tok_s",
        "weight_bytes",
        "decode_effective_gb_s",
        "threads",
    ] {
        let x = v[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} not a number: {v}"));
        assert!(x > 0.0 && x.is_finite(), "{k} = {x}");
    }
    for k in ["prefill_tok_s_runs", "decode_tok_s_runs"] {
        let runs = v[k].as_array().unwrap_or_else(|| panic!("{k}: {v}"));
        assert_eq!(runs.len(), 2);
        assert!(runs.iter().all(|x| x.as_f64().is_some_and(|x| x > 0.0)));
    }
    assert_eq!(v["threads"].as_u64(), Some(2));
    assert_eq!(
        (
            v["prompt_tokens"].as_u64(),
            v["gen_tokens"].as_u64(),
            v["repetitions"].as_u64()
        ),
        (Some(16), Some(8), Some(2))
    );
    assert!(v["model"].as_str().unwrap().contains("llama"));
    if cfg!(target_os = "linux") {
        assert!(v["peak_rss_bytes"].as_u64().unwrap() > 0);
    } else {
        assert!(v.get("peak_rss_bytes").is_some());
    }
    // bf16 tiny llama: every weight stored in 2 bytes
    let params = v["params"].as_u64().unwrap();
    assert_eq!(v["weight_bytes"].as_u64(), Some(2 * params));
}

#[test]
fn bench_table_and_bad_sizes() {
    let m = tiny("qwen3");
    let out = run(&["bench", "-m", s(&m), "-p", "8", "-n", "4", "-r", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    for want in ["| model", "pp8", "tg4", "roofline", "GB/s", "peak RSS"] {
        assert!(stdout.contains(want), "{want} missing: {stdout}");
    }
    let e = fails(&["bench", "-m", s(&m), "-r", "0"]);
    assert!(e.contains("--repetitions"), "{e}");
    let e = fails(&["bench", "-m", s(&m), "-p", "100000"]);
    assert!(e.contains("100000") && e.contains("512"), "{e}");
    let e = fails(&["bench", "-m", s(&m), "-p", "0", "-n", "0"]);
    assert!(e.contains("nothing"), "{e}");
}
