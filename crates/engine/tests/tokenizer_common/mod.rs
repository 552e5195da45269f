//! Helpers shared by the tokenizer tests: fixture paths and loading.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};

use mm_engine::tokenizer::{GgufVocab, Tokenizer};
use serde_json::Value;

/// `tests/fixtures/tokenizer/` at the workspace root.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer")
}

pub fn read_json(name: &str) -> Value {
    let path = fixtures().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The SmolLM2 vocabulary as the GGUF stores it.
pub fn smollm2_gguf_vocab() -> GgufVocab {
    let path = fixtures().join("smollm2-gguf-vocab.json.gz");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .expect("gunzip");
    serde_json::from_str(&text).expect("GgufVocab JSON")
}

pub fn smollm2_hf() -> Tokenizer {
    Tokenizer::from_hf_dir(&fixtures().join("smollm2-hf")).expect("load the SmolLM2 HF directory")
}

pub fn smollm2_gguf() -> Tokenizer {
    Tokenizer::from_gguf_vocab(smollm2_gguf_vocab()).expect("build the SmolLM2 GGUF tokenizer")
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// A fresh, empty directory under the system temp dir.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mm-engine-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
    pub fn write(&self, name: &str, contents: &str) {
        std::fs::write(self.0.join(name), contents).expect("write temp file");
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// GPT-2's byte → character table (`bytes_to_unicode`).
pub fn byte_char(b: u8) -> char {
    let printable = |b: u8| {
        (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

/// Byte-level spelling of text.
pub fn byte_level(s: &str) -> String {
    s.bytes().map(byte_char).collect()
}
