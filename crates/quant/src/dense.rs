//! Any stored format to f32: the scalar reference.

use mm_core::{Result, WeightData};

/// Dequantizes a whole weight to f32 values, row-major.
pub fn dequantize_ref(w: &WeightData) -> Result<Vec<f32>> {
    todo!("helper")
}
