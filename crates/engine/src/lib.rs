//! The engine: tokenizers, chat templates, sampling and the generation loop.

pub mod tokenizer;
