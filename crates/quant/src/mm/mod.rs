//! metal-marlin's own quantized formats (docs/FORMAT.md): INT8/4/3/2
//! symmetric and asymmetric, NF4, FP8 E4M3/E5M2, FP4 E2M1 and MXFP4, with
//! per-channel or 32/64/128-wide groups.
//!
//! * [`quantize_rtn`] / [`quantize_mm_row`]: round-to-nearest reference
//!   quantizers (rows in parallel).
//! * [`dequantize_mm_row`]: the row decoder every kernel and crate reuses;
//!   [`dequantize_mm_ref`]: the element-by-element scalar reference;
//!   [`dequantize_mm`] / [`dequantize_mm_weight`]: whole weights in parallel.
//! * [`codec`]: the element codecs (FP8, E2M1, E8M0, NF4 levels).
//! * [`GroupQuantizer`]: one group's RTN parameters and codec, for
//!   quantizers that encode values one at a time (GPTQ).
//! * [`ScaleSearch`]: min/max group parameters, or the searched ones that
//!   minimize the group's error (`search.rs`); [`quantize_rtn_with`].
//! * [`pack_codes`] / [`unpack_codes`]: little-endian bit packing.
//! * [`mm_part_shapes`], [`mm_part_names`], [`mm_weight_from_parts`]: the
//!   stored tensors of a quantized weight.
//! * [`QuantizationConfig`] reads and writes `quantization_config.json`.

pub mod codec;
pub mod config;
pub mod dequantize;
pub mod group;
pub mod layout;
pub mod pack;
pub mod quantize;
pub mod search;

#[cfg(test)]
mod tests;

pub use config::{QuantMethod, QuantizationConfig, TensorQuant, FORMAT_VERSION, QUANT_CONFIG_FILE};
pub use dequantize::{
    code_at, decode, dequantize_mm, dequantize_mm_ref, dequantize_mm_row, dequantize_mm_weight,
};
pub use group::GroupQuantizer;
pub use layout::{
    mm_base_name, mm_part_names, mm_part_shapes, mm_weight_from_parts, scale_dtype, MmPartShapes,
    PartView,
};
pub use mm_core::weight::{
    MmFormat, MmKind, MmPartSizes, MmScale, MM_FORMAT_NAMES, MM_GROUP_SIZES,
};
pub use pack::{pack_codes, unpack_codes};
pub use quantize::{quantize_mm_row, quantize_rtn, quantize_rtn_with, MmPart, QuantizedTensor};
pub use search::ScaleSearch;
