//! One module per subcommand.

mod bench;
mod chat;
mod eval;
mod generate;
mod info;
mod logits;
mod quantize;
mod serve;

use anyhow::Result;

use crate::args::{Command, SamplingArgs};

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Logits(a) => logits::run(a),
        Command::Info(a) => info::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Serve(a) => serve::run(a),
    }
}

/// Sampling settings from the flags.
pub(crate) fn sampling(a: &SamplingArgs) -> mm_engine::SamplingParams {
    mm_engine::SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        seed: a.seed,
        ..Default::default()
    }
}

/// Prints a generation's timing line on stderr.
pub(crate) fn report(s: &mm_engine::GenerateStats) {
    eprintln!(
        "\n[prefill {} tok, {:.1} tok/s | decode {} tok, {:.1} tok/s]",
        s.prompt_tokens,
        s.prefill_tok_s(),
        s.generated_tokens,
        s.decode_tok_s()
    );
}
