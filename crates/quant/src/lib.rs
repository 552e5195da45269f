//! Quantized weight formats: block layouts and their scalar reference
//! dequantizers (the `_ref` twins every fast kernel is tested against).

pub mod dense;
pub mod ggml;

pub use dense::{dequantize_ref, dequantize_rows_ref};
pub use ggml::dequantize_row;
