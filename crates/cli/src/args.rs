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
    /// Perplexity over a text file, and KL divergence against a reference model.
    ///
    /// The text is tokenized once (BOS first only if the tokenizer adds one)
    /// and cut into non-overlapping windows of --ctx tokens (a shorter tail is
    /// dropped); each window starts from an empty KV cache. As llama.cpp's
    /// `llama-perplexity` does by default, only the second half of each window
    /// is scored: the logits at positions ctx/2..ctx-1 predict the next token,
    /// so every scored token sees at least ctx/2 tokens of context (ctx-1-ctx/2
    /// tokens per window), and when the tokenizer adds BOS each window's first
    /// token is replaced by BOS.
    ///
    /// With --ref, the reference model runs on the same windows and, at the same
    /// positions, the mean KL(ref ‖ model) over the full vocabulary, the top-1
    /// agreement and the reference's perplexity are reported. Both models must
    /// share the tokenizer.
    Eval(EvalArgs),
    /// Prefill and decode throughput, like llama-bench's pp/tg tests.
    ///
    /// Prefill (ppN): one forward of N random ordinary tokens into an empty KV
    /// cache. Decode (tgN): N single-token forwards after a 1-token prefix. Each
    /// test runs once untimed as warm-up, then --repetitions timed times; the
    /// table shows the median ± standard deviation and the extremes in tokens per
    /// second. Use the global --threads to set the worker threads.
    Bench(BenchArgs),
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

#[derive(Args)]
pub struct EvalArgs {
    /// HF model directory, .gguf file, or hub id (default: SmolLM2-135M-Instruct).
    #[arg(short, long)]
    pub model: Option<String>,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    /// UTF-8 text file to evaluate on.
    #[arg(long)]
    pub text: PathBuf,
    /// Window length in tokens; the last half of each window is scored
    /// (positions ctx/2..ctx-1, as llama-perplexity).
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Reference model (same tokenizer) for KL divergence and top-1 agreement.
    #[arg(long = "ref", value_name = "REF_MODEL")]
    pub reference: Option<String>,
    /// Evaluate at most N windows.
    #[arg(long, value_name = "N")]
    pub max_chunks: Option<usize>,
    /// Print one JSON object (ppl, kld, top1, tokens, ref_ppl, chunks, ctx).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct BenchArgs {
    /// HF model directory, .gguf file, or hub id (default: SmolLM2-135M-Instruct).
    #[arg(short, long)]
    pub model: Option<String>,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    /// Tokens of the prefill test (0 skips it).
    #[arg(short = 'p', long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens of the decode test (0 skips it).
    #[arg(short = 'n', long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Timed runs of each test, after one untimed warm-up run.
    #[arg(short = 'r', long, default_value_t = 5)]
    pub repetitions: usize,
    /// Seed of the random token ids.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}
