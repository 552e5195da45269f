//! The CPU's prepared form of a dense weight: its values as f32, computed
//! once per weight and shared by every layer that uses it (tied embeddings).
//! The fast path uses it for dense and metal-marlin formats; GGML block
//! formats use it only in the exact (reference-precision) mode.

use std::sync::Arc;

use mm_core::{Result, WeightData};

/// Dense row-major f32 values of a weight.
pub struct DenseF32(pub Vec<f32>);

/// The weight's values as f32, converted once and cached in the weight.
pub fn dense_f32(w: &WeightData) -> Result<Arc<DenseF32>> {
    w.prepared(|w| Ok(DenseF32(mm_quant::dequantize_ref(w)?)))
}
