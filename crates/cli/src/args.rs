//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use mm_engine::ReasoningParser;

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
    /// Quantize an HF directory or GGUF file into a metal-marlin quantized
    /// model directory (docs/FORMAT.md; recipes in docs/QUANTIZE.md).
    Quantize(QuantizeArgs),
    /// OpenAI-compatible HTTP server (chat and text completions, streaming,
    /// /tokenize, /detokenize, /health, Prometheus /metrics) over the
    /// continuous-batching engine and its paged KV cache.
    Serve(ServeArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceKind {
    /// A GPU when this build has its backend and one is usable, else the CPU.
    Auto,
    Cpu,
    Cuda,
    Wgpu,
}

/// How precisely the quantized kernels compute (docs/QUALITY.md,
/// "Faithfulness").
#[derive(Args, Clone, Copy, Debug, Default)]
pub struct PrecisionArgs {
    /// Verification mode: f32 activations and every weight dequantized to
    /// f32 once (what transformers computes; slower, more memory).
    #[arg(long, conflicts_with = "fast_activations")]
    pub exact: bool,
    /// One 8-bit activation pass, as llama.cpp's CPU kernels: faster
    /// prefill, but the logits drift from the model's (by default a second
    /// 8-bit pass over the rounding remainder keeps them faithful).
    #[arg(long)]
    pub fast_activations: bool,
}

/// Which model, on which device.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// HF model directory, .gguf file, or hub id (default: SmolLM2-135M-Instruct).
    #[arg(short, long)]
    pub model: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceKind,
    /// KV-cache length (default: the model's context length, at most 4096).
    #[arg(long)]
    pub ctx: Option<usize>,
    #[command(flatten)]
    pub precision: PrecisionArgs,
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
    /// Structured output: the answer is JSON valid under the JSON schema in
    /// this file (enforced while decoding).
    #[arg(long, value_name = "FILE", group = "constraint")]
    pub json_schema: Option<PathBuf>,
    /// Structured output: the answer is a JSON object.
    #[arg(long, group = "constraint")]
    pub json: bool,
    /// Structured output: the answer matches this regular expression.
    #[arg(long, value_name = "REGEX", group = "constraint")]
    pub regex: Option<String>,
    /// Structured output: the answer is in the language of the Lark grammar
    /// in this file (llguidance's dialect).
    #[arg(long, value_name = "FILE", group = "constraint")]
    pub grammar: Option<PathBuf>,
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
    /// Show the model's reasoning: dimmed on a terminal, else between
    /// `<think>` and `</think>` lines [default when stdout is a terminal].
    #[arg(long, conflicts_with = "hide_reasoning")]
    pub show_reasoning: bool,
    /// Leave the model's reasoning out, showing only the answer [default
    /// when stdout is not a terminal].
    #[arg(long)]
    pub hide_reasoning: bool,
    /// Ask the chat template for thinking (sets `enable_thinking` true).
    #[arg(long, conflicts_with = "no_think")]
    pub think: bool,
    /// Ask the chat template to skip thinking (sets `enable_thinking`
    /// false; templates without the switch ignore it).
    #[arg(long)]
    pub no_think: bool,
    #[command(flatten)]
    pub reasoning: ReasoningArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Which models' output is split into reasoning and answer.
#[derive(Args, Clone, Copy)]
pub struct ReasoningArgs {
    /// Split reasoning (`<think>`…`</think>`) from the answer: auto (when
    /// the vocabulary or the chat template has both tags), none, qwen3 or
    /// glm45 (always), deepseek_r1 (always, and the answer starts inside
    /// reasoning unless the prompt says otherwise).
    #[arg(long, value_name = "NAME", default_value = "auto", value_parser = reasoning_parser)]
    pub reasoning_parser: ReasoningParser,
}

fn reasoning_parser(s: &str) -> Result<ReasoningParser, String> {
    s.parse()
}

#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',', required = true)]
    pub ids: Vec<u32>,
    /// Feed the last N ids one at a time, as generated tokens (decode
    /// steps), after the others as one prompt; the logits of every
    /// position are written either way.
    #[arg(long, default_value_t = 0)]
    pub decode: usize,
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
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceKind,
    #[command(flatten)]
    pub precision: PrecisionArgs,
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
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceKind,
    #[command(flatten)]
    pub precision: PrecisionArgs,
    /// Tokens of the prefill test (0 skips it).
    #[arg(short = 'p', long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens of the decode test (0 skips it).
    #[arg(short = 'n', long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Timed runs of each test, after one untimed warm-up run.
    #[arg(short = 'r', long, default_value_t = 5)]
    pub repetitions: usize,
    /// Tokens already in the KV cache before each test (prefilled untimed),
    /// as llama-bench's `-d`: prefill and decode with attention over that
    /// many more keys.
    #[arg(short = 'd', long, default_value_t = 0)]
    pub depth: usize,
    /// Seed of the random token ids.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Also measure decode throughput of this many sequences generating
    /// together through the batched engine (comma-separated counts, e.g.
    /// `8,32,64`): `-n` tokens each, all sequences' tokens per second.
    #[arg(long, value_delimiter = ',')]
    pub batch: Vec<usize>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ServeArgs {
    /// HF model directory, .gguf file or hub id (or give it with -m;
    /// default: SmolLM2-135M-Instruct).
    #[arg(value_name = "MODEL", conflicts_with = "model")]
    pub positional: Option<String>,
    /// The model (same as MODEL).
    #[arg(short, long)]
    pub model: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceKind,
    /// `--exact` also stores the KV cache in f32 (default f16).
    #[command(flatten)]
    pub precision: PrecisionArgs,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on the API routes (/health and
    /// /metrics stay open).
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// The model name clients send and /v1/models lists (default: MODEL as
    /// given, or the default model's hub id).
    #[arg(long, value_name = "NAME")]
    pub served_model_name: Option<String>,
    /// Most sequences decoding at once.
    #[arg(long, default_value_t = 64)]
    pub max_num_seqs: usize,
    /// Token budget of one step, prefill chunks and decodes together
    /// [default: max(2048, --max-num-seqs)].
    #[arg(long, value_name = "N")]
    pub max_num_batched_tokens: Option<usize>,
    /// KV-cache memory in GiB [default: 1].
    #[arg(
        long,
        value_name = "GIB",
        conflicts_with = "num_kv_blocks",
        allow_negative_numbers = true
    )]
    pub kv_memory: Option<f64>,
    /// KV-cache size in blocks (instead of --kv-memory).
    #[arg(long, value_name = "N")]
    pub num_kv_blocks: Option<usize>,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Longest prompt plus completion [default: the model's context, capped
    /// by the KV cache].
    #[arg(long, value_name = "N")]
    pub max_model_len: Option<usize>,
    /// Answer 503 (Retry-After) while this many sequences wait.
    #[arg(long, value_name = "N")]
    pub max_queue: Option<usize>,
    /// Accepted for compatibility; batching is always on.
    #[arg(long)]
    pub enable_batching: bool,
    /// Do not share cached KV blocks between requests with common prefixes.
    #[arg(long)]
    pub no_enable_prefix_caching: bool,
    /// Serve /metrics on this port as well.
    #[arg(long, value_name = "P")]
    pub metrics_port: Option<u16>,
    #[command(flatten)]
    pub reasoning: ReasoningArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// Round-to-nearest.
    Rtn,
    /// GPTQ with Hessians from calibration text (needs --calib).
    Gptq,
}

/// `quantize --expert-bits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExpertBitsArg {
    /// From measured sensitivity under --target-bpw.
    Auto,
}

/// `quantize --scale-search`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScaleSearchArg {
    Auto,
    Minmax,
    Mse,
}

#[derive(Args)]
pub struct QuantizeArgs {
    /// Source model: HF directory, .gguf file or hub id (or give it with
    /// -m; default: the default model, SmolLM2-135M-Instruct).
    #[arg(value_name = "SRC", conflicts_with = "model")]
    pub src: Option<String>,
    /// Source model (same as SRC).
    #[arg(short, long, value_name = "SRC")]
    pub model: Option<String>,
    /// Output directory; must not exist unless --force.
    #[arg(short, long, value_name = "OUT")]
    pub out: PathBuf,
    /// Format of the linear layers: int8 int4 int3 int2 (-asym variants),
    /// nf4, fp8-e4m3 (fp8), fp8-e5m2, fp4, mxfp4, trellis2, trellis3, trellis4
    /// (trellis codes, docs/FORMAT.md §4.8) [default: int4].
    #[arg(long, conflicts_with = "recipe")]
    pub format: Option<String>,
    /// Elements per scale group: 0 (per-channel), 32, 64, 128 [default: 128,
    /// or the format's fixed group]. Given explicitly, every quantized row
    /// must be divisible by it (see --group-fallback).
    #[arg(long, conflicts_with = "recipe")]
    pub group_size: Option<u32>,
    /// Where the group size does not divide a tensor's rows, use the largest
    /// smaller one that does (64, 32, else per-channel) for that tensor.
    #[arg(long)]
    pub group_fallback: bool,
    #[arg(long, value_enum, default_value = "rtn")]
    pub method: MethodArg,
    /// Calibration text file (required by --method gptq; at least 2048
    /// tokens, up to 16 windows of 512 are used).
    #[arg(long, value_name = "FILE")]
    pub calib: Option<PathBuf>,
    /// GPTQ: quantize columns in order of decreasing activation energy
    /// (with groups fixed up front, as the layout has no g_idx).
    #[arg(long)]
    pub act_order: bool,
    /// How each group's scale (and zero-point) is chosen: `minmax` covers
    /// the group's range; `mse` searches for the clipping that minimizes
    /// the group's squared error (weighted by input energy with GPTQ).
    /// `auto`: mse for GPTQ weights of 4 bits or fewer, minmax otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    pub scale_search: ScaleSearchArg,
    /// GPTQ: once the codes are chosen, re-solve each row's group scales for
    /// the least layer output error on the calibration data (not mxfp4).
    #[arg(long)]
    pub refit_scales: bool,
    /// GPTQ: error propagation strength in [0, 1] [default: 0.5]. Each
    /// weight is first moved towards what the unquantized model computes,
    /// correcting the error that earlier quantized layers put into its
    /// inputs (QEP); 0 turns it off.
    #[arg(long, value_name = "STRENGTH", allow_negative_numbers = true)]
    pub propagate_error: Option<f64>,
    /// GPTQ error propagation: the weights whose output is added to the
    /// residual stream (o_proj, down_proj) also take up the error that the
    /// stream already carries there.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub propagate_residual: bool,
    /// GPTQ: after each layer is quantized, train its quantized weights and
    /// scales for EPOCHS passes over the calibration windows so that the
    /// layer reproduces the unquantized model's output (block-wise tuning,
    /// straight-through rounding); the best epoch on held-out windows is
    /// kept. 0: off.
    #[arg(long, value_name = "EPOCHS", default_value_t = 0)]
    pub tune: usize,
    /// Block-wise tuning: Adam step of the weights, in group scales.
    #[arg(long, value_name = "LR", default_value_t = mm_engine::tune::train::DEFAULT_LR)]
    pub tune_lr: f32,
    /// Block-wise tuning: Adam step of the scales, relative to each scale.
    #[arg(long, value_name = "LR", default_value_t = mm_engine::tune::train::DEFAULT_SCALE_LR)]
    pub tune_scale_lr: f32,
    /// GPTQ: calibration windows of 512 tokens taken from --calib (at most).
    #[arg(long, value_name = "N", default_value_t = mm_engine::calib::DEFAULT_MAX_WINDOWS)]
    pub calib_windows: usize,
    /// GPTQ of mixture-of-experts models: a routed expert that the
    /// calibration text routes fewer than MULT × (the weight's input width)
    /// tokens to has its Hessian blended with the layer-wide one (every
    /// token entering the block), in proportion to the tokens it lacks; 0:
    /// each expert's own Hessian only.
    #[arg(long, value_name = "MULT", allow_negative_numbers = true, default_value_t = mm_engine::calib::DEFAULT_EXPERT_MIN_TOKENS)]
    pub expert_min_tokens: f64,
    /// Per-expert bit allocation: `auto` picks each routed expert's format
    /// among --expert-formats from its measured sensitivity on --calib
    /// (routing frequency × output error), so that all routed-expert
    /// weights take at most --target-bpw bits per weight.
    #[arg(long, value_enum, requires = "target_bpw")]
    pub expert_bits: Option<ExpertBitsArg>,
    /// --expert-bits auto: bits per routed-expert weight, at most (codes,
    /// scales and zero-points counted; other weights are not part of it).
    #[arg(long, value_name = "B", requires = "expert_bits")]
    pub target_bpw: Option<f64>,
    /// --expert-bits auto: the candidate formats, comma-separated, each
    /// with the default group unless it names one (int4/g64)
    /// [default: int2,int3,int4,int8].
    #[arg(long, value_name = "LIST", requires = "expert_bits")]
    pub expert_formats: Option<String>,
    /// Rotate the model first (QuaRot-style random orthogonal rotation of
    /// the residual stream and of attention values, fused into the
    /// weights): spreads outlier channels; measured to help only with GPTQ
    /// at 3-4 bits. The output is an ordinary model with an untied LM head.
    #[arg(long)]
    pub rotate: bool,
    /// A preset mix of formats (instead of --format/--group-size).
    #[arg(long, value_parser = recipe_parser())]
    pub recipe: Option<mm_quantize::rules::Recipe>,
    /// REGEX=FORMAT: tensors whose name the regex matches (anywhere; anchor
    /// with ^$) get FORMAT: f16, bf16, f32 (unquantized) or a quantized
    /// format, optionally with a group (int8/g64). Repeatable; later wins.
    #[arg(long = "keep", value_name = "REGEX=FORMAT")]
    pub keep: Vec<String>,
    /// Largest shard: bytes, or with a unit (500MB, 2GB, 1GiB).
    #[arg(long, default_value = "2GB", value_parser = parse_size)]
    pub shard_size: u64,
    /// Replace OUT if it exists (only once the new model is complete).
    #[arg(long)]
    pub force: bool,
}

/// `2GB`, `500MB`, `1.5GiB`, `123` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (write e.g. 2GB, 500MB or a byte count)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "'{s}': unknown unit '{u}' (use B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    let v = n * mult;
    if !(v >= 1.0 && v < 1e18) {
        return Err(format!("'{s}': the size must be at least one byte"));
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("500mb").unwrap(), 500_000_000);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5k").unwrap(), 1500);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("0").is_err());
        assert!(parse_size("2XB").unwrap_err().contains("unit"));
        assert!(parse_size("GB").is_err());
    }
}

/// `--recipe`: the names of [`mm_quantize::rules::Recipe`], each with what
/// it holds in the help.
fn recipe_parser() -> impl clap::builder::TypedValueParser<Value = mm_quantize::rules::Recipe> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    use mm_quantize::rules::Recipe;
    PossibleValuesParser::new(Recipe::ALL.map(|r| PossibleValue::new(r.name()).help(r.describe())))
        .map(|s| Recipe::from_name(&s).expect("clap passes only the listed names"))
}
