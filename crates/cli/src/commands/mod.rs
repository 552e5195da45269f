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

/// The guide for `--json-schema`, `--json`, `--regex` or `--grammar`.
pub(crate) fn guide(
    a: &SamplingArgs,
    tok: &mm_engine::tokenizer::Tokenizer,
) -> anyhow::Result<Option<mm_engine::constrain::Guide>> {
    use anyhow::Context;
    use mm_engine::constrain::{Constraint, GrammarCompiler};
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read_to_string(p).with_context(|| format!("reading the {what} {}", p.display()))
    };
    let c = if let Some(p) = &a.json_schema {
        let text = read(p, "JSON schema")?;
        let v = serde_json::from_str(&text)
            .with_context(|| format!("the JSON schema {} is not valid JSON", p.display()))?;
        Constraint::JsonSchema(v)
    } else if a.json {
        Constraint::JsonObject
    } else if let Some(r) = &a.regex {
        Constraint::Regex(r.clone())
    } else if let Some(p) = &a.grammar {
        Constraint::Lark(read(p, "grammar")?)
    } else {
        return Ok(None);
    };
    Ok(Some(GrammarCompiler::new(tok)?.compile(&c)?))
}

/// Prints a generation's timing line on stderr.
pub(crate) fn report(s: &mm_engine::GenerateStats) {
    let cached = match s.cached_tokens {
        0 => String::new(),
        c => format!(" ({c} cached)"),
    };
    eprintln!(
        "\n[prefill {} tok{cached}, {:.1} tok/s | decode {} tok, {:.1} tok/s]",
        s.prompt_tokens,
        s.prefill_tok_s(),
        s.generated_tokens,
        s.decode_tok_s()
    );
}
