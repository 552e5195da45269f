//! Block-wise tuning of quantized weights (EfficientQAT's Block-AP, Chen et
//! al. 2024), after GPTQ: each decoder layer's quantized weights are
//! trained, with straight-through gradients through the rounding
//! (`mm_quant::ste`), so that the quantized layer run on the quantized
//! model's residual streams reproduces the unquantized model's streams.
//!
//! Why: GPTQ fits each weight alone to a quadratic proxy of its own output
//! error. Training the whole layer against the unquantized model's output
//! lets weights compensate each other's rounding through the attention and
//! the MLP's non-linearity and moves scales off the grid GPTQ searched;
//! at 2 bits that is where most of the remaining error is.
//!
//! Parts: [`ops`] (f32 forward/backward of the layer's operations),
//! [`block`] (the layer as a function of its weights, with its backward
//! pass), [`train`] (Adam, held-out early stopping).

pub mod block;
pub mod ops;
pub mod train;

pub use block::{Block, Tape, LINEARS};
pub use train::{held_out, tune_block, Param, TuneOptions, TuneReport};
