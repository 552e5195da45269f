//! The engine: tokenizers, chat templates, sampling, model resolution, the
//! generation loop and GPTQ calibration.

pub mod calib;
pub mod generate;
pub mod resolve;
pub mod sampler;
pub mod tokenizer;

pub use generate::{generate, GenerateOutput, GenerateRequest, GenerateStats, StopReason};
pub use sampler::{Sampler, SamplingParams};
