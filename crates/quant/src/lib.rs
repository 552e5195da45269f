//! Quantized weight formats: block layouts and their scalar reference
//! dequantizers (the `_ref` twins every fast kernel is tested against),
//! and the quantizers that produce metal-marlin formats (RTN in `mm`,
//! GPTQ in `gptq`).

pub mod alloc;
pub mod dense;
pub mod ggml;
pub mod gptq;
pub mod gpu_layout;
pub mod mm;
pub mod ste;
pub mod trellis;

pub use dense::{dequantize_ref, dequantize_rows_into, dequantize_rows_ref};
pub use ggml::dequantize_row;
pub use mm::{
    dequantize_mm_ref, dequantize_mm_row, quantize_rtn, quantize_rtn_with, MmFormat, MmKind,
    QuantizedTensor, ScaleSearch,
};
