//! GGUF v2/v3 reader (memory-mapped).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mm_core::{Result, WeightData, WeightFormat};

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

/// One tensor's header entry.
#[derive(Clone, Debug)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Logical row-major shape (GGUF `ne` reversed: `[rows, cols]` for 2-D).
    pub shape: Vec<usize>,
    pub format: WeightFormat,
    /// Byte offset from the start of the file.
    pub offset: usize,
    pub size: usize,
}

/// An opened GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    map: Arc<memmap2::Mmap>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        todo!("helper")
    }
    pub fn tensor(&self, name: &str) -> Result<WeightData> {
        todo!("helper")
    }
}
