//! The engine: tokenizers, chat templates, sampling, model resolution and
//! the generation loop.

pub mod generate;
pub mod resolve;
pub mod sampler;
pub mod tokenizer;

pub use generate::{generate, GenerateOutput, GenerateRequest, GenerateStats, StopReason};
pub use sampler::{Sampler, SamplingParams};
