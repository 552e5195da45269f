//! The engine: tokenizers, chat templates, sampling, constrained decoding,
//! model resolution, the generation loop and the batched step loop,
//! reasoning split from the answer, GPTQ calibration, perplexity/KL
//! evaluation and throughput benchmarks.

pub mod batch;
pub mod bench;
pub mod calib;
pub mod constrain;
pub mod eval;
pub mod generate;
pub mod reasoning;
pub mod resolve;
pub mod sampler;
pub mod sched;
pub mod stop;
pub mod tokenizer;
pub mod tune;

pub use generate::{
    engine_for, generate, GenerateOutput, GenerateRequest, GenerateStats, StopReason,
};
pub use reasoning::{ReasoningConfig, ReasoningParser, ReasoningSplitter, Split};
pub use sampler::{Sampler, SamplingParams};
pub use stop::StopFilter;
