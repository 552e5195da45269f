//! Whole models on the wgpu backend (feature `wgpu`), through the
//! `metal-marlin` binary as a user runs it: `logits --device wgpu` against
//! references nobody here wrote, and against the CPU's exact path.
//!
//! * every tiny fixture (dense, MoE and MLA), as stored (bf16): against transformers'
//!   f32 logits, the tolerance of the CPU's default path (the KV cache is
//!   f16): max |Δlogit| ≤ 2e-3 · max |logit|, top-1 identical at every
//!   position;
//! * two dense fixtures quantized by us to six formats, and three MoE/MLA
//!   ones to one or two (their experts run on the GPU too): against the
//!   CPU's `--exact` logits of the same weights, mean KL ≤ 1e-3, top-1
//!   100 %;
//! * the real SmolLM2-135M-Instruct (Q4_1 GGUF): against transformers'
//!   logits, mean KL ≤ 1e-3, top-1 100 %;
//! * each as a prompt and with its last ids as decode steps.
//!
//! Without a Vulkan or Metal adapter the tests say why and pass;
//! `MM_REQUIRE_WGPU=1` (CI, with Mesa's lavapipe) makes that a failure.
#![cfg(feature = "wgpu")]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn available() -> bool {
    match mm_backend_wgpu::WgpuBackend::new() {
        Ok(b) => {
            eprintln!("adapter: {}", b.describe());
            true
        }
        Err(e) if std::env::var_os("MM_REQUIRE_WGPU").is_none_or(|v| v != "1") => {
            eprintln!("skipped (no usable adapter): {e}");
            false
        }
        Err(e) => panic!("MM_REQUIRE_WGPU=1 but: {e}"),
    }
}

/// The repository root: the build tree's, or the working directory when
/// the test binary runs elsewhere (the GPU machine, from the bundle of
/// `scripts/test-cuda.sh build`).
fn root() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if built.join("tests/fixtures/tiny").is_dir() {
        built
    } else {
        PathBuf::from(".")
    }
}

/// The CLI under test: `MM_BIN` when set (the bundle's), else cargo's.
fn bin() -> PathBuf {
    std::env::var_os("MM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_metal-marlin")))
}

fn run(args: &[&str]) -> String {
    let out = Command::new(bin())
        .env("HF_HUB_OFFLINE", "1")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "metal-marlin {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ids_arg(v: &Value) -> String {
    let ids: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect();
    ids.join(",")
}

fn log_softmax(x: &[f32]) -> Vec<f64> {
    let mx = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) as f64;
    let lse = x.iter().map(|v| (*v as f64 - mx).exp()).sum::<f64>().ln() + mx;
    x.iter().map(|v| *v as f64 - lse).collect()
}

fn argmax(x: &[f32]) -> usize {
    (0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b })
}

/// `logits` of `model` for `ids` on `device` (with `extra` flags).
fn logits(model: &Path, ids: &str, device: &str, extra: &[&str], tmp: &Path) -> (usize, Vec<f32>) {
    let out = tmp.join(format!("{device}{}.npy", extra.join("")));
    let mut args = vec!["logits", "-m", model.to_str().unwrap(), "--ids", ids];
    args.extend(["--device", device, "--out", out.to_str().unwrap()]);
    args.extend(extra);
    run(&args);
    let (shape, v) = mm_models::npy::read_npy(&out).unwrap();
    (shape[1], v)
}

/// Rows `first..` of `got` against `want` (`rows × vocab`): top-1 at every
/// row and the mean KL(want ‖ got); returns (mean KL, max |Δ| / max |want|).
fn compare(what: &str, got: &[f32], first: usize, want: &[f32], vocab: usize) -> (f64, f64) {
    let rows = want.len() / vocab;
    let (mut kl, mut dmax, mut wmax) = (0.0, 0f64, 0f64);
    for r in 0..rows {
        let g = &got[(first + r) * vocab..(first + r + 1) * vocab];
        let w = &want[r * vocab..(r + 1) * vocab];
        assert_eq!(argmax(g), argmax(w), "{what}: top-1 differs at row {r}");
        let (lg, lw) = (log_softmax(g), log_softmax(w));
        kl += lw
            .iter()
            .zip(&lg)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>();
        for (a, b) in g.iter().zip(w) {
            dmax = dmax.max((a - b).abs() as f64);
            wmax = wmax.max(b.abs() as f64);
        }
    }
    let (kl, rel) = (kl / rows as f64, dmax / wmax.max(1e-30));
    eprintln!("{what}: mean KL {kl:.2e}, max |Δlogit| / max |logit| {rel:.1e}");
    (kl, rel)
}

fn tiny() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("tests/fixtures/tiny"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("reference.json").is_file())
        .collect();
    v.sort();
    v
}

fn reference(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

#[test]
fn tiny_models_match_transformers() {
    if !available() {
        return;
    }
    let tmp = std::env::temp_dir().join(format!("mm-wgpu-tiny-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let models = tiny();
    assert!(models.len() >= 17, "only {} tiny fixtures", models.len());
    for dir in models {
        let r = reference(&dir);
        let ids = ids_arg(&r["input_ids"]);
        let (_, want) = mm_models::npy::read_npy(&dir.join("logits.npy")).unwrap();
        for extra in [&[][..], &["--decode", "4"]] {
            let (vocab, got) = logits(&dir, &ids, "wgpu", extra, &tmp);
            let what = format!("{} {extra:?}", dir.file_name().unwrap().to_string_lossy());
            let (_, rel) = compare(&what, &got, 0, &want, vocab);
            assert!(
                rel <= 2e-3,
                "{what}: max |Δlogit| {rel:.2e} of the largest logit"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn quantized_models_match_the_cpu() {
    if !available() {
        return;
    }
    let tmp = std::env::temp_dir().join(format!("mm-wgpu-quant-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let every = ["int4", "int4-asym", "int8", "nf4", "mxfp4", "int3"];
    let models: [(&str, &[&str]); 5] = [
        ("llama", &every),
        ("qwen3", &every),
        ("qwen3-moe", &["int4", "int8"]),
        ("glm4-moe-lite", &["int4", "int8"]),
        ("deepseek-v3-yarn", &["int4"]),
    ];
    for (name, formats) in models {
        let src = root().join("tests/fixtures/tiny").join(name);
        let ids = ids_arg(&reference(&src)["input_ids"]);
        for &format in formats {
            let q = tmp.join(format!("{name}-{format}"));
            run(&[
                "quantize",
                src.to_str().unwrap(),
                "--out",
                q.to_str().unwrap(),
                "--format",
                format,
                "--group-size",
                "32",
                "--group-fallback",
            ]);
            let (vocab, want) = logits(&q, &ids, "cpu", &["--exact"], &tmp);
            for extra in [&[][..], &["--decode", "4"]] {
                let (_, got) = logits(&q, &ids, "wgpu", extra, &tmp);
                let what = format!("{name} {format} {extra:?}");
                let (kl, _) = compare(&what, &got, 0, &want, vocab);
                assert!(kl <= 1e-3, "{what}: mean KL {kl:.2e}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn smollm2_matches_transformers() {
    if !available() {
        return;
    }
    let Some(path) = mm_engine::resolve::smollm2_for_tests() else {
        return;
    };
    let fixtures = root().join("tests/fixtures/smollm2");
    let r = reference(&fixtures);
    let tmp = std::env::temp_dir().join(format!("mm-wgpu-smollm2-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for case in r["logits"].as_array().unwrap() {
        let key = case["key"].as_str().unwrap();
        let ids = ids_arg(&case["input_ids"]);
        let file = fixtures.join(case["logits_file"].as_str().unwrap());
        let (_, want) = mm_models::npy::read_npy(&file).unwrap();
        let first = case["first_position"].as_u64().unwrap() as usize;
        for extra in [&[][..], &["--decode", "3"]] {
            let (vocab, got) = logits(&path, &ids, "wgpu", extra, &tmp);
            let what = format!("SmolLM2 {key} {extra:?}");
            let (kl, _) = compare(&what, &got, first, &want, vocab);
            assert!(kl <= 1e-3, "{what}: mean KL {kl:.2e}");
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Generation through the batched engine on the wgpu backend, sampling
/// there too (greedy rows on the GPU): each model's 16-token greedy
/// continuation as transformers produced it, all four prompts decoding
/// together.
#[test]
fn tiny_models_generate_transformers_greedy_ids() {
    use std::sync::Arc;

    use mm_engine::batch::{BatchEngine, BatchRequest};
    use mm_engine::sched::SchedulerConfig;
    if !available() {
        return;
    }
    for name in ["llama", "qwen3", "qwen3-moe", "glm4-moe-lite"] {
        let dir = root().join("tests/fixtures/tiny").join(name);
        let r = reference(&dir);
        let (prompt, want) = (ids_of(&r["greedy_prompt"]), ids_of(&r["greedy_ids"]));
        let gpu = mm_backend_wgpu::WgpuBackend::new().unwrap();
        let cpu: Arc<dyn mm_core::Backend> = Arc::new(mm_backend_cpu::CpuBackend::new());
        let device = mm_core::Device::new(Arc::new(gpu), cpu);
        let src = mm_formats::open_source(&dir).unwrap();
        let model = mm_models::load_model(src.as_ref(), &device, &|_, _| {}).unwrap();
        let cfg = SchedulerConfig {
            num_blocks: 64,
            ..Default::default()
        };
        let mut engine = BatchEngine::new(&model, cfg, model.default_kv_dtype()).unwrap();
        for _ in 0..4 {
            engine
                .add(BatchRequest {
                    prompt: prompt.clone(),
                    max_new_tokens: want.len(),
                    ..Default::default()
                })
                .unwrap();
        }
        let mut got: Vec<Vec<u32>> = vec![Vec::new(); 4];
        let mut ids = Vec::new();
        while engine.has_unfinished() {
            for e in engine.step().unwrap() {
                let slot = match ids.iter().position(|&i| i == e.id) {
                    Some(s) => s,
                    None => {
                        ids.push(e.id);
                        ids.len() - 1
                    }
                };
                got[slot].push(e.token);
            }
        }
        for g in &got {
            assert_eq!(g, &want, "{name}: greedy ids on the wgpu backend");
        }
        eprintln!("{name}: 4 × {} greedy ids as transformers'", want.len());
    }
}
