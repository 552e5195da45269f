//! Test helpers: a tiny GGUF writer, safetensors files, temp directories.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use mm_core::WeightFormat;
use mm_formats::gguf::ggml_type_id;
use mm_formats::GgufValue;

/// A fresh empty directory under the target dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let base = std::env::temp_dir().join(format!(
            "mm-formats-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        TempDir(base)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A metadata entry: a value, or a type id and raw bytes (for malformed
/// files).
pub enum Kv {
    Value(GgufValue),
    Raw(u32, Vec<u8>),
}

pub struct TensorSpec {
    pub name: String,
    /// GGUF order (innermost first).
    pub ne: Vec<u64>,
    pub ggml_type: u32,
    pub data: Vec<u8>,
    /// Overrides the computed data offset.
    pub offset: Option<u64>,
}

/// Builds GGUF v2/v3 files.
pub struct GgufBuilder {
    pub magic: [u8; 4],
    pub version: u32,
    pub kv: Vec<(String, Kv)>,
    pub tensors: Vec<TensorSpec>,
    pub alignment: usize,
}

pub fn value_type(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

pub fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.push(*x as u8),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(*x as u8),
        GgufValue::String(s) => put_str(out, s),
        GgufValue::Array(a) => {
            let et = a.first().map(value_type).unwrap_or(0);
            out.extend_from_slice(&et.to_le_bytes());
            out.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for x in a {
                put_value(out, x);
            }
        }
    }
}

impl Default for GgufBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufBuilder {
    pub fn new() -> Self {
        GgufBuilder {
            magic: *b"GGUF",
            version: 3,
            kv: Vec::new(),
            tensors: Vec::new(),
            alignment: 32,
        }
    }

    pub fn kv(mut self, key: &str, v: GgufValue) -> Self {
        self.kv.push((key.to_string(), Kv::Value(v)));
        self
    }

    pub fn raw_kv(mut self, key: &str, ty: u32, bytes: Vec<u8>) -> Self {
        self.kv.push((key.to_string(), Kv::Raw(ty, bytes)));
        self
    }

    pub fn alignment(mut self, a: usize) -> Self {
        self.alignment = a;
        self.kv("general.alignment", GgufValue::U32(a as u32))
    }

    /// A tensor of row-major `shape` in `format` with its raw bytes.
    pub fn tensor(
        mut self,
        name: &str,
        shape: &[usize],
        format: WeightFormat,
        data: Vec<u8>,
    ) -> Self {
        self.tensors.push(TensorSpec {
            name: name.to_string(),
            ne: shape.iter().rev().map(|&d| d as u64).collect(),
            ggml_type: ggml_type_id(format),
            data,
            offset: None,
        });
        self
    }

    /// An F32 tensor of values.
    pub fn f32_tensor(self, name: &str, shape: &[usize], values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, shape, WeightFormat::F32, data)
    }

    pub fn raw_tensor(mut self, t: TensorSpec) -> Self {
        self.tensors.push(t);
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.magic);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut out, k);
            match v {
                Kv::Value(v) => {
                    out.extend_from_slice(&value_type(v).to_le_bytes());
                    put_value(&mut out, v);
                }
                Kv::Raw(ty, bytes) => {
                    out.extend_from_slice(&ty.to_le_bytes());
                    out.extend_from_slice(bytes);
                }
            }
        }
        let align = |x: usize| x.div_ceil(self.alignment) * self.alignment;
        let mut offsets = Vec::new();
        let mut off = 0usize;
        for t in &self.tensors {
            offsets.push(off);
            off = align(off + t.data.len());
        }
        for (t, &o) in self.tensors.iter().zip(&offsets) {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.to_le_bytes());
            out.extend_from_slice(&t.offset.unwrap_or(o as u64).to_le_bytes());
        }
        if !self.tensors.is_empty() {
            out.resize(align(out.len()), 0);
            let start = out.len();
            for (t, &o) in self.tensors.iter().zip(&offsets) {
                out.resize(start + o, 0);
                out.extend_from_slice(&t.data);
            }
        }
        out
    }
}

/// The metadata of a small llama-style model: 2 layers, hidden 32, 4 heads
/// of width 8, 2 KV heads, vocab 16.
pub fn llama_meta(b: GgufBuilder, arch: &str) -> GgufBuilder {
    let k = |s: &str| format!("{arch}.{s}");
    b.kv("general.architecture", GgufValue::String(arch.into()))
        .kv("general.name", GgufValue::String("tiny".into()))
        .kv(&k("embedding_length"), GgufValue::U32(32))
        .kv(&k("feed_forward_length"), GgufValue::U32(64))
        .kv(&k("block_count"), GgufValue::U32(2))
        .kv(&k("attention.head_count"), GgufValue::U32(4))
        .kv(&k("attention.head_count_kv"), GgufValue::U32(2))
        .kv(&k("attention.layer_norm_rms_epsilon"), GgufValue::F32(1e-5))
        .kv(&k("rope.freq_base"), GgufValue::F32(100000.0))
        .kv(&k("context_length"), GgufValue::U32(256))
        .kv(
            "tokenizer.ggml.tokens",
            GgufValue::Array(
                (0..16)
                    .map(|i| GgufValue::String(format!("t{i}")))
                    .collect(),
            ),
        )
        .kv("tokenizer.ggml.bos_token_id", GgufValue::U32(1))
        .kv("tokenizer.ggml.eos_token_id", GgufValue::U32(2))
}

/// A safetensors file from a header JSON text and data bytes.
pub fn st_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// A valid safetensors file of F32 tensors (name, shape, values).
pub fn st_f32(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let mut header = String::from("{");
    let mut data = Vec::new();
    for (i, (name, shape, vals)) in tensors.iter().enumerate() {
        let s = data.len();
        data.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            "\"{name}\":{{\"dtype\":\"F32\",\"shape\":{shape:?},\"data_offsets\":[{s},{}]}}",
            data.len()
        ));
    }
    header.push('}');
    st_bytes(&header, &data)
}

/// Error text of a result that must be an error.
pub fn err_text<T>(r: mm_core::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}
