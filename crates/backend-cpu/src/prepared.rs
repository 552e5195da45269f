//! The CPU's prepared forms of a weight, computed once per weight and shared
//! by every layer that uses it (tied embeddings):
//!
//! * [`dense_f32`]: its values as f32 — GGML and metal-marlin formats in the
//!   exact (reference-precision) mode only (dense F32/F16/BF16 weights are
//!   multiplied on their stored bytes, `ops::matmul::dense`);
//! * [`mm_prepared`]: a metal-marlin weight repacked for the fused kernels
//!   (`ops::qmatmul::mm`), about the size of the stored codes;
//! * [`il_prepared`]: a Q4_0/Q4_1/Q8_0 weight repacked row-interleaved for
//!   the 512-bit VNNI kernels (`ops::qmatmul::il`), the stored bytes.

use std::sync::Arc;

use mm_core::{Result, WeightData};

use crate::ops::qmatmul::il::{self, IlPrepared};
use crate::ops::qmatmul::mm::{self, MmPrepared};

/// Dense row-major f32 values of a weight.
pub struct DenseF32(pub Vec<f32>);

/// The weight's values as f32, converted once and cached in the weight. A
/// weight already prepared in another form (the fast backend's repacked
/// metal-marlin codes) is converted on each call instead.
pub fn dense_f32(w: &WeightData) -> Result<Arc<DenseF32>> {
    w.prepared(|w| Ok(DenseF32(mm_quant::dequantize_ref(w)?)))
        .or_else(|_| Ok(Arc::new(DenseF32(mm_quant::dequantize_ref(w)?))))
}

/// A metal-marlin weight repacked for the fused CPU kernels, built once
/// and cached in the weight.
pub fn mm_prepared(w: &WeightData) -> Result<Arc<MmPrepared>> {
    w.prepared(mm::prepare)
}

/// A Q4_0/Q4_1/Q8_0 weight repacked row-interleaved, built once and cached
/// in the weight.
pub fn il_prepared(w: &WeightData) -> Result<Arc<IlPrepared>> {
    w.prepared(il::prepare)
}
