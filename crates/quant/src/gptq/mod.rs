//! GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization
//! for Generative Pre-trained Transformers") on the CPU, producing ordinary
//! metal-marlin [`QuantizedTensor`](crate::mm::QuantizedTensor)s.
//!
//! * [`Hessian`] accumulates `H = 2·XᵀX / n` of a linear layer's input rows
//!   (f64, streaming as the reference: `H ← H·n/(n+m) + 2/(n+m)·XᵀX`);
//!   [`Gram`] lets layers that share an input share the product.
//! * [`gptq_quantize`] quantizes a `[out, in]` weight against it: dead
//!   columns, dampening, the upper Cholesky factor of `H⁻¹` ([`cholesky`]),
//!   lazy-block error feedback, group parameters fitted with the format's own
//!   round-to-nearest rule ([`GroupQuantizer`](crate::mm::GroupQuantizer)).
//! * [`propagate_error`] (QEP) moves the weight to quantize towards the
//!   unquantized model's output when the inputs carry earlier layers'
//!   quantization error ([`ErrorCross`] accumulates that error).
//!
//! Every metal-marlin format works: symmetric and asymmetric INT2/3/4/8,
//! NF4, FP8 E4M3/E5M2, FP4 and MXFP4, per-channel or grouped. Groups run
//! along the input columns; `act_order` needs `static_groups` when a row has
//! several groups (the layout has no `g_idx`), see [`gptq_quantize`].

pub mod cholesky;
pub mod hessian;
mod propagate;
pub(crate) mod quantize;
mod refit;

#[cfg(test)]
mod tests;

pub use hessian::{Gram, Hessian};
pub use propagate::{propagate_error, ErrorCross};
pub use quantize::{
    gptq_quantize, gptq_quantize_weight, gptq_quantize_with_stats, GptqOptions, GptqStats,
};
