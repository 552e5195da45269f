//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "metal-marlin",
    version,
    about = "Run low-bit quantized LLMs fast on the hardware you own"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Debug logging on stderr (or set METAL_MARLIN_LOG).
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Continue a raw prompt; stdout is the generated text only, streamed.
    Generate(GenerateArgs),
    /// Chat with the model's chat template (interactive, or one turn with --prompt).
    Chat(ChatArgs),
    /// Write the output logits for given token ids as a float32 .npy [tokens, vocab].
    Logits(LogitsArgs),
    /// Describe a model: architecture, sizes, tensor types, tokenizer.
    Info(InfoArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceKind {
    Cpu,
    Cuda,
    Wgpu,
}

/// Which model, on which device.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// HF model directory, .gguf file, or hub id (default: SmolLM2-135M-Instruct).
    #[arg(short, long)]
    pub model: Option<String>,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    /// KV-cache length (default: the model's context length, at most 4096).
    #[arg(long)]
    pub ctx: Option<usize>,
}

/// Sampling settings (default: greedy).
#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Maximum new tokens.
    #[arg(short = 'n', long = "max-tokens", default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop before this string (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt, tokenized raw (BOS only if the tokenizer adds one).
    #[arg(short, long)]
    pub prompt: String,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// One user turn, then exit (otherwise an interactive session on stdin).
    #[arg(long)]
    pub prompt: Option<String>,
    /// System message.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',', required = true)]
    pub ids: Vec<u32>,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// List every tensor.
    #[arg(long)]
    pub tensors: bool,
}
