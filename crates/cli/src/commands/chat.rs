//! `chat`: the model's chat template, one turn (`--prompt`) or a REPL.

use std::io::{BufRead, Write};

use anyhow::Result;
use mm_engine::tokenizer::ChatMessage;
use mm_engine::{engine_for, generate, GenerateRequest};

use crate::args::ChatArgs;
use crate::load::load;

pub fn run(a: ChatArgs) -> Result<()> {
    let m = load(&a.model)?;
    let guide = super::guide(&a.sampling, &m.tokenizer)?;
    let mut engine = engine_for(&m.model, m.ctx)?;
    let mut history: Vec<ChatMessage> = Vec::new();
    if let Some(s) = &a.system {
        history.push(ChatMessage::new("system", s));
    }
    let interactive = a.prompt.is_none();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        let user = match &a.prompt {
            Some(p) if history.iter().all(|m| m.role != "user") => p.clone(),
            Some(_) => break,
            None => {
                eprint!("> ");
                std::io::stderr().flush()?;
                match lines.next() {
                    Some(l) => l?,
                    None => break,
                }
            }
        };
        if interactive && user.trim().is_empty() {
            continue;
        }
        if interactive && matches!(user.trim(), "/exit" | "/quit") {
            break;
        }
        history.push(ChatMessage::new("user", &user));
        let prompt = m.tokenizer.render_chat(&history, true)?;
        let req = GenerateRequest {
            prompt_ids: m.tokenizer.encode(&prompt, false)?,
            max_new_tokens: a.sampling.max_tokens,
            sampling: super::sampling(&a.sampling),
            stop_strings: a.sampling.stop.clone(),
            stop_on_eos: !a.sampling.ignore_eos,
            guide: guide.clone(),
        };
        // Each turn re-renders the whole conversation; the engine's prefix
        // cache serves what the template left unchanged, the rest is
        // prefilled.
        let mut out = std::io::stdout().lock();
        let res = generate(&mut engine, &m.tokenizer, &req, &mut |s| {
            out.write_all(s.as_bytes())
                .and_then(|_| out.flush())
                .map_err(|e| mm_core::Error::Other(format!("writing stdout: {e}")))
        });
        writeln!(out)?;
        match res {
            Ok(r) => {
                super::report(&r.stats);
                history.push(ChatMessage::new("assistant", r.text.trim()));
            }
            Err(e) if interactive => {
                eprintln!("metal-marlin: error: {e}");
                history.pop();
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
