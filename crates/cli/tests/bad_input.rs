//! Bad input gets a clear error on stderr and exit code 1, never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_metal-marlin"))
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mm-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the CLI, expects failure, returns stderr.
fn fails(args: &[&str]) -> String {
    let out = bin()
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "args {args:?}: expected exit 1, stderr: {err}"
    );
    assert!(!err.contains("panicked"), "args {args:?} panicked: {err}");
    assert!(
        err.contains("error:"),
        "args {args:?}: no error line: {err}"
    );
    err
}

fn tiny(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(name)
}

#[test]
fn missing_path() {
    let e = fails(&["info", "-m", "/nonexistent/model.gguf"]);
    assert!(e.contains("/nonexistent/model.gguf"), "{e}");
}

#[test]
fn not_a_model_file() {
    let d = tmpdir("notmodel");
    let f = d.join("x.gguf");
    std::fs::write(&f, b"hello world, not a gguf").unwrap();
    let e = fails(&["info", "-m", f.to_str().unwrap()]);
    assert!(e.contains("x.gguf"), "{e}");
}

#[test]
fn truncated_gguf() {
    let d = tmpdir("trunc");
    let f = d.join("t.gguf");
    // magic, version 3, then the header stops mid-way
    std::fs::write(
        &f,
        [b"GGUF".as_slice(), &3u32.to_le_bytes(), &[1, 0]].concat(),
    )
    .unwrap();
    let e = fails(&["generate", "-m", f.to_str().unwrap(), "-p", "hi"]);
    assert!(e.to_lowercase().contains("gguf"), "{e}");
}

#[test]
fn directory_without_config() {
    let d = tmpdir("noconfig");
    let e = fails(&["info", "-m", d.to_str().unwrap()]);
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn unknown_architecture() {
    let d = tmpdir("unknownarch");
    let cfg = std::fs::read_to_string(tiny("llama").join("config.json"))
        .unwrap()
        .replace("LlamaForCausalLM", "FancyNewForCausalLM")
        .replace("\"llama\"", "\"fancy\"");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    std::fs::copy(
        tiny("llama").join("model.safetensors"),
        d.join("model.safetensors"),
    )
    .unwrap();
    let e = fails(&["info", "-m", d.to_str().unwrap()]);
    assert!(e.contains("Fancy") || e.contains("fancy"), "{e}");
}

#[test]
fn config_missing_field() {
    let d = tmpdir("missingfield");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny("llama").join("config.json")).unwrap())
            .unwrap();
    v.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(d.join("config.json"), v.to_string()).unwrap();
    std::fs::copy(
        tiny("llama").join("model.safetensors"),
        d.join("model.safetensors"),
    )
    .unwrap();
    let e = fails(&["info", "-m", d.to_str().unwrap()]);
    assert!(e.contains("hidden_size"), "{e}");
}

#[test]
fn corrupted_safetensors() {
    let d = tmpdir("badst");
    std::fs::copy(tiny("llama").join("config.json"), d.join("config.json")).unwrap();
    let bytes = std::fs::read(tiny("llama").join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = fails(&[
        "logits",
        "-m",
        d.to_str().unwrap(),
        "--ids",
        "1,2",
        "--out",
        d.join("o.npy").to_str().unwrap(),
    ]);
    assert!(e.contains("safetensors"), "{e}");
}

#[test]
fn logits_rejects_out_of_vocab_ids() {
    let d = tmpdir("oov");
    let e = fails(&[
        "logits",
        "-m",
        tiny("llama").to_str().unwrap(),
        "--ids",
        "1,99999",
        "--out",
        d.join("o.npy").to_str().unwrap(),
    ]);
    assert!(e.contains("99999"), "{e}");
}

#[test]
fn logits_writes_npy_of_the_right_shape() {
    let d = tmpdir("npy");
    let out = d.join("o.npy");
    let st = bin()
        .args([
            "logits",
            "-m",
            tiny("qwen2").to_str().unwrap(),
            "--ids",
            "1,2,3",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let (shape, v) = mm_models::npy::read_npy(&out).unwrap();
    assert_eq!(shape, vec![3, 320]);
    assert!(v.iter().all(|x| x.is_finite()));
}

#[test]
fn bad_ctx_and_sampling_values() {
    let m = tiny("llama");
    let e = fails(&[
        "logits",
        "-m",
        m.to_str().unwrap(),
        "--ids",
        "1",
        "--out",
        "/tmp/x.npy",
        "--ctx",
        "100000",
    ]);
    assert!(e.contains("--ctx"), "{e}");
}

/// `logits --decode N` runs the last N ids as decode steps: on the exact
/// path the same logits as one prompt (up to f32 summation order), and a
/// count that leaves no prompt is an error naming the limit.
#[test]
fn logits_as_decode_steps_match_the_prompt() {
    let d = tmpdir("decode");
    let m = tiny("llama");
    let ids = "289,197,263,7,164,62,246,274,60,27,141,66";
    let run = |extra: &[&str], out: &Path| {
        let st = bin()
            .args(["logits", "-m", m.to_str().unwrap(), "--ids", ids, "--exact"])
            .args(extra)
            .args(["--device", "cpu", "--out", out.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        mm_models::npy::read_npy(out).unwrap()
    };
    let (sa, a) = run(&[], &d.join("prompt.npy"));
    let (sb, b) = run(&["--decode", "7"], &d.join("decode.npy"));
    assert_eq!(sa, vec![12, 320]);
    assert_eq!(sa, sb);
    let max = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    // Measured 3.5e-7 of the largest logit.
    assert!(
        diff <= 1e-5 * max,
        "decode steps differ by {diff} (max {max})"
    );
    let e = fails(&[
        "logits",
        "-m",
        m.to_str().unwrap(),
        "--ids",
        "1,2,3",
        "--decode",
        "3",
        "--out",
        d.join("x.npy").to_str().unwrap(),
    ]);
    assert!(e.contains("at most 2"), "{e}");
}
