//! `generate`: raw prompt in, streamed continuation out.

use std::io::Write;

use anyhow::Result;
use mm_engine::{engine_for, generate, GenerateRequest};

use crate::args::GenerateArgs;
use crate::load::load;

pub fn run(a: GenerateArgs) -> Result<()> {
    let m = load(&a.model)?;
    let req = GenerateRequest {
        prompt_ids: m.tokenizer.encode(&a.prompt, true)?,
        max_new_tokens: a.sampling.max_tokens,
        sampling: super::sampling(&a.sampling),
        stop_strings: a.sampling.stop.clone(),
        stop_on_eos: !a.sampling.ignore_eos,
        guide: super::guide(&a.sampling, &m.tokenizer)?,
    };
    let mut engine = engine_for(&m.model, m.ctx)?;
    let mut out = std::io::stdout().lock();
    let res = generate(&mut engine, &m.tokenizer, &req, &mut |s| {
        out.write_all(s.as_bytes())
            .and_then(|_| out.flush())
            .map_err(|e| mm_core::Error::Other(format!("writing stdout: {e}")))
    })?;
    writeln!(out)?;
    super::report(&res.stats);
    Ok(())
}
