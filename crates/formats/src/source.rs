//! One interface over a checkpoint, whatever its file format.

use std::path::Path;

use mm_core::{Result, WeightData};

use crate::ModelConfig;

/// Tensors under their HF names, with GGUF names and layouts mapped.
pub trait WeightSource: Send + Sync {
    fn config(&self) -> &ModelConfig;
    fn tensor(&self, hf_name: &str) -> Result<WeightData>;
    fn contains(&self, hf_name: &str) -> bool;
}

/// Opens a HF directory or a `.gguf` file.
pub fn open_source(path: &Path) -> Result<Box<dyn WeightSource>> {
    todo!("helper")
}
