//! One or sharded safetensors files, memory-mapped.

use std::path::Path;

use mm_core::{Result, WeightData};

/// All tensors of a model directory's safetensors files.
pub struct SafetensorsSet {}

impl SafetensorsSet {
    pub fn open_dir(dir: &Path) -> Result<Self> {
        todo!("helper")
    }
    pub fn tensor(&self, name: &str) -> Result<WeightData> {
        todo!("helper")
    }
}
