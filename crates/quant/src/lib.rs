//! Quantized weight formats: block layouts and their scalar reference
//! dequantizers (the `_ref` twins every fast kernel is tested against).

pub mod ggml;
pub mod dense;

pub use dense::dequantize_ref;
