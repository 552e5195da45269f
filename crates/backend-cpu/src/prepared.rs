//! The CPU's prepared form of a dense weight: its values as f32, computed
//! once per weight and shared by every layer that uses it (tied embeddings).
//! Only F16/BF16 weights are widened (and F32 copied once); GGML block
//! formats are never dequantized: their matmuls run on the stored bytes.

use std::sync::Arc;

use mm_core::{Error, Result, WeightData};

/// Dense row-major f32 values of a weight.
pub struct DenseF32(pub Vec<f32>);

/// The weight's values as f32, converted once and cached in the weight.
/// Refuses GGML block formats (they have no dense form on the CPU).
pub fn dense_f32(w: &WeightData) -> Result<Arc<DenseF32>> {
    if !w.format.is_dense() {
        return Err(Error::Invalid(format!(
            "{} weights are used in their stored blocks, not as dense f32",
            w.format.name()
        )));
    }
    w.prepared(|w| Ok(DenseF32(mm_quant::dequantize_ref(w)?)))
}
