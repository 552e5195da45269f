//! Check against a real model file: by default the SmolLM2 GGUF in the
//! metal-marlin cache (scripts/test.sh fetches it; with `MM_REQUIRE_SMOLLM2`
//! set its absence is a failure, otherwise the test says it is skipped), or
//! any file given by `MM_REAL_GGUF`:
//!
//! ```text
//! MM_REAL_GGUF=/path/model.gguf MM_REAL_GGUF_HASHES=/path/hashes \
//!   cargo test -p mm-formats --test real_gguf -- --nocapture
//! ```
//!
//! Every tensor is dequantized and hashed as `scripts/gguf_reference_hashes.py`
//! hashes gguf-py's dequantization; the hashes of SmolLM2-135M-Instruct
//! Q4_1 are in `tests/data/`. Another file needs `MM_REAL_GGUF_HASHES`
//! pointing at the script's output for it.

use std::path::PathBuf;

use mm_formats::{open_source, Arch, GgufFile, ModelConfig};

/// The model file: `$MM_REAL_GGUF`, `$MM_SMOLLM2_GGUF`, else the SmolLM2
/// GGUF in the cache (`$METAL_MARLIN_CACHE`, `$XDG_CACHE_HOME/metal-marlin`
/// or `~/.cache/metal-marlin`, as the engine's `resolve::cache_dir`).
fn model_path() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).map(PathBuf::from);
    let p = env("MM_REAL_GGUF")
        .or_else(|| env("MM_SMOLLM2_GGUF"))
        .or_else(|| {
            let cache = env("METAL_MARLIN_CACHE").or_else(|| {
                env("XDG_CACHE_HOME")
                    .or_else(|| env("HOME").map(|h| h.join(".cache")))
                    .map(|c| c.join("metal-marlin"))
            })?;
            Some(cache.join("SmolLM2-135M-Instruct.Q4_1.gguf"))
        })?;
    if p.is_file() {
        return Some(p);
    }
    if std::env::var_os("MM_REQUIRE_SMOLLM2").is_some() {
        panic!(
            "{} not found (run scripts/test.sh, which fetches it)",
            p.display()
        );
    }
    eprintln!("skipping: {} not found", p.display());
    None
}

fn weighted_hash(v: &[f32]) -> u64 {
    v.iter().enumerate().fold(0u64, |h, (k, x)| {
        h.wrapping_add((x.to_bits() as u64).wrapping_mul((k % 65521) as u64 + 1))
    })
}

#[test]
fn real_gguf_matches_gguf_py() {
    let Some(path) = model_path() else {
        return;
    };
    let hashes = std::env::var("MM_REAL_GGUF_HASHES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/smollm2-135m-instruct-q4_1.hashes")
        });
    let t0 = std::time::Instant::now();
    let f = GgufFile::open(&path).unwrap();
    println!(
        "opened {} (v{}, {} keys, {} tensors) in {:?}",
        path.display(),
        f.version,
        f.metadata.len(),
        f.tensors.len(),
        t0.elapsed()
    );

    let text = std::fs::read_to_string(&hashes).unwrap();
    let mut n = 0;
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let [name, ty, shape, hash] = parts[..] else {
            panic!("bad line {line}")
        };
        let w = f.tensor(name).unwrap();
        assert_eq!(w.format.name(), ty, "{name}");
        let shape: Vec<usize> = shape.split(',').map(|s| s.parse().unwrap()).collect();
        assert_eq!(w.shape, shape, "{name}");
        let v = mm_quant::dequantize_ref(&w).unwrap();
        assert_eq!(
            weighted_hash(&v),
            hash.parse::<u64>().unwrap(),
            "{name}: dequantized values differ from gguf-py"
        );
        n += 1;
    }
    assert_eq!(n, f.tensors.len());
    println!("{n} tensors bit-exact with gguf-py");

    let c = ModelConfig::from_gguf(&f).unwrap();
    println!("{c:?}");
    if path.ends_with("SmolLM2-135M-Instruct.Q4_1.gguf") {
        assert_eq!(c.arch, Arch::Llama);
        assert_eq!(
            (c.hidden_size, c.intermediate_size, c.num_layers),
            (576, 1536, 30)
        );
        assert_eq!(
            (c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size),
            (9, 3, 64, 49152)
        );
        assert!(c.tie_word_embeddings);
        assert_eq!(c.rope_theta, 100000.0);
        assert_eq!(c.max_position_embeddings, 8192);
    }

    // Through the source: HF names, q/k rows unpermuted.
    let src = open_source(&path).unwrap();
    let q = src
        .tensor("model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    let raw = f.tensor("blk.0.attn_q.weight").unwrap();
    let (rows, cols) = q.dims2().unwrap();
    let a = mm_quant::dequantize_ref(&q).unwrap();
    let b = mm_quant::dequantize_ref(&raw).unwrap();
    let d = rows / c.num_heads;
    for h in 0..c.num_heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let (g, hf) = (h * d + 2 * i + j, h * d + j * d / 2 + i);
                assert_eq!(a[hf * cols..(hf + 1) * cols], b[g * cols..(g + 1) * cols]);
            }
        }
    }
    let names = src.describe();
    assert_eq!(names.len(), f.tensors.len());
    for (name, _, _) in &names {
        src.tensor(name).unwrap();
    }
    println!("source: {} tensors under HF names", names.len());
}
