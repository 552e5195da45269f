//! The real SmolLM2-135M-Instruct through the `metal-marlin` binary, as a
//! user runs it, against transformers' references
//! (`tests/fixtures/smollm2`, made by `scripts/make_fixtures.py`):
//!
//! * the README's first command, exactly as written, answers
//!   "The capital of France is Paris";
//! * `logits` (default and `--exact`): top-1 agreement 100 % at every stored
//!   position; mean KL(transformers ‖ ours) ≤ 1e-4 (measured 4.0e-6 for
//!   both: the default path's 8-bit activations carry their 8-bit remainder);
//! * `generate` (default and `--exact`): the 32-token greedy texts of
//!   transformers, identical;
//! * `eval --exact` and `bench --exact` run and say so.
//!
//! The model comes from `$MM_SMOLLM2_GGUF` or the default-model cache
//! (`scripts/test.sh` fetches it); without it these tests fail when
//! `MM_REQUIRE_SMOLLM2` is set (as in CI) and are skipped otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The binary with no extra flags (the README's commands pass none).
fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_metal-marlin"));
    c.env("HF_HUB_OFFLINE", "1");
    c
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/smollm2")
}

fn model() -> Option<(PathBuf, Value)> {
    let path = mm_engine::resolve::smollm2_for_tests()?;
    let reference = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("reference.json")).unwrap(),
    )
    .unwrap();
    Some((path, reference))
}

/// Runs the binary; panics with its stderr unless it succeeds; its stdout.
fn run(args: &[&str]) -> String {
    let out = bin().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "metal-marlin {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ids_arg(v: &Value) -> String {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn log_softmax(x: &[f32]) -> Vec<f64> {
    let mx = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) as f64;
    let lse = x.iter().map(|v| (*v as f64 - mx).exp()).sum::<f64>().ln() + mx;
    x.iter().map(|v| *v as f64 - lse).collect()
}

fn argmax(x: &[f32]) -> usize {
    (0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b })
}

/// `logits` with `extra` flags against every stored logits case: asserts
/// top-1 100 % and mean KL ≤ `max_kl` per case.
fn check_logits(extra: &[&str], max_kl: f64) {
    let Some((path, reference)) = model() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("mm-smollm2-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for case in reference["logits"].as_array().unwrap() {
        let key = case["key"].as_str().unwrap();
        let out = dir.join(format!("{key}{}.npy", extra.join("")));
        let ids = ids_arg(&case["input_ids"]);
        let mut args = vec!["logits", "-m", path.to_str().unwrap(), "--ids", &ids];
        args.extend(["--out", out.to_str().unwrap()]);
        args.extend(extra);
        run(&args);
        let (gshape, got) = mm_models::npy::read_npy(&out).unwrap();
        let (shape, want) =
            mm_models::npy::read_npy(&fixture_dir().join(case["logits_file"].as_str().unwrap()))
                .unwrap();
        let vocab = shape[1];
        assert_eq!(gshape[1], vocab, "{key}: vocabulary size");
        let first = case["first_position"].as_u64().unwrap() as usize;
        let expect: Vec<usize> = case["argmax"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let mut kl = 0.0;
        for r in 0..shape[0] {
            let g = &got[(first + r) * vocab..(first + r + 1) * vocab];
            let w = &want[r * vocab..(r + 1) * vocab];
            let (lg, lw) = (log_softmax(g), log_softmax(w));
            kl += lw
                .iter()
                .zip(&lg)
                .map(|(a, b)| a.exp() * (a - b))
                .sum::<f64>();
            assert_eq!(
                argmax(g),
                expect[r],
                "{key} {extra:?}: top-1 differs at row {r}"
            );
        }
        kl /= shape[0] as f64;
        eprintln!("{key} {extra:?}: mean KL {kl:.2e}");
        assert!(
            kl <= max_kl,
            "{key} {extra:?}: mean KL {kl:.3e} > {max_kl:.0e}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `generate` with `extra` flags reproduces every 32-token greedy text.
fn check_greedy(extra: &[&str]) {
    let Some((path, reference)) = model() else {
        return;
    };
    for case in reference["greedy"].as_array().unwrap() {
        let key = case["key"].as_str().unwrap();
        let prompt = case["rendered_prompt"].as_str().unwrap();
        let n = case["max_new_tokens"].as_u64().unwrap().to_string();
        let mut args = vec!["generate", "-m", path.to_str().unwrap(), "-p", prompt];
        args.extend(["-n", &n, "--ignore-eos"]);
        args.extend(extra);
        let text = run(&args);
        let want = case["greedy_text"].as_str().unwrap();
        assert_eq!(
            text.strip_suffix('\n').unwrap_or(&text),
            want,
            "{key} {extra:?}: greedy text differs from transformers"
        );
    }
}

/// The README's first command, exactly as written (default model, default
/// flags).
#[test]
fn readme_chat_command_answers_paris() {
    if model().is_none() {
        return;
    }
    let out = run(&["chat", "--prompt", "What is the capital of France?"]);
    assert!(
        out.starts_with("The capital of France is Paris"),
        "the README's chat command answered {out:?}"
    );
}

#[test]
fn chat_exact_answers_paris() {
    if model().is_none() {
        return;
    }
    let out = run(&[
        "chat",
        "--exact",
        "--prompt",
        "What is the capital of France?",
    ]);
    assert!(
        out.starts_with("The capital of France is Paris"),
        "--exact answered {out:?}"
    );
}

#[test]
fn logits_default_match_transformers() {
    check_logits(&[], 1e-4);
}

#[test]
fn logits_exact_match_transformers() {
    check_logits(&["--exact"], 1e-4);
}

#[test]
fn greedy_default_matches_transformers() {
    check_greedy(&[]);
}

#[test]
fn greedy_exact_matches_transformers() {
    check_greedy(&["--exact"]);
}

#[test]
fn eval_and_bench_take_exact() {
    let Some((path, _)) = model() else {
        return;
    };
    let p = path.to_str().unwrap();
    let text = std::env::temp_dir().join(format!("mm-smollm2-eval-{}.txt", std::process::id()));
    std::fs::write(&text, "The capital of France is Paris. ".repeat(20)).unwrap();
    let out = run(&[
        "eval",
        "--exact",
        "-m",
        p,
        "--text",
        text.to_str().unwrap(),
        "--ctx",
        "64",
        "--json",
    ]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let ppl = v["ppl"].as_f64().unwrap();
    assert!(ppl.is_finite() && ppl >= 1.0, "eval --exact ppl {ppl}");
    let _ = std::fs::remove_file(&text);
    let out = run(&[
        "bench", "--exact", "-m", p, "-p", "8", "-n", "4", "-r", "1", "--json",
    ]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["backend"], "cpu (exact)", "bench --exact output: {out}");
}

/// `chat --json-schema FILE`: the answer is JSON valid under the schema;
/// `--regex` constrains `generate`; a schema that is not JSON, or not a
/// valid schema, is an error naming the file or the problem.
#[test]
fn structured_output_flags() {
    if model().is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("mm-structured-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let schema = dir.join("person.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"], "additionalProperties": false}"#,
    )
    .unwrap();
    let out = run(&[
        "chat",
        "--prompt",
        "Describe a fictional person as JSON with a name and an age.",
        "--json-schema",
        schema.to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert!(v["name"].is_string() && v["age"].is_i64(), "{out}");
    assert_eq!(v.as_object().unwrap().len(), 2, "{out}");

    let out = run(&[
        "generate",
        "--prompt",
        "The French Revolution started in the year",
        "--regex",
        " 1[0-9]{3}",
    ]);
    let year = out.trim();
    assert!(year.len() == 4 && year.starts_with('1'), "{out:?}");

    let broken = dir.join("broken.json");
    std::fs::write(&broken, r#"{"type": "object""#).unwrap();
    let nonsense = dir.join("nonsense.json");
    std::fs::write(&nonsense, r#"{"type": "nonsense"}"#).unwrap();
    for (file, says) in [
        (&broken, "is not valid JSON"),
        (&nonsense, "invalid JSON schema"),
        (&dir.join("absent.json"), "reading the JSON schema"),
    ] {
        let out = bin()
            .args([
                "chat",
                "--prompt",
                "x",
                "--json-schema",
                file.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(says), "{file:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
