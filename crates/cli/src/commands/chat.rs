//! `chat`: the model's chat template, one turn (`--prompt`) or a REPL. A
//! reasoning model's reasoning is shown dimmed (or between `<think>` lines
//! when stdout is not a terminal) or left out; `--think`/`--no-think` set
//! the template's `enable_thinking`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Result;
use mm_engine::tokenizer::{ChatMessage, ChatTemplateOptions};
use mm_engine::{engine_for, generate, GenerateRequest, ReasoningConfig, ReasoningSplitter, Split};

use crate::args::ChatArgs;
use crate::load::load;

pub fn run(a: ChatArgs) -> Result<()> {
    let m = load(&a.model)?;
    let guide = super::guide(&a.sampling, &m.tokenizer)?;
    let mut engine = engine_for(&m.model, m.ctx)?;
    let mut opts = ChatTemplateOptions {
        add_generation_prompt: true,
        ..Default::default()
    };
    if a.think || a.no_think {
        let has_switch = m
            .tokenizer
            .chat_template()
            .is_some_and(|t| t.contains("enable_thinking"));
        if !has_switch {
            eprintln!(
                "metal-marlin: warning: the chat template has no enable_thinking switch; --think/--no-think change nothing"
            );
        }
        opts.extra
            .insert("enable_thinking".into(), serde_json::Value::Bool(a.think));
    }
    let reasoning = ReasoningConfig::detect(a.reasoning.reasoning_parser, &m.tokenizer);
    if let Err(why) = &reasoning {
        tracing::debug!("reasoning is not split: {why}");
    }
    let tty = std::io::stdout().is_terminal();
    let show = a.show_reasoning || (tty && !a.hide_reasoning);

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
        let prompt = m.tokenizer.render_chat_with(&history, &opts)?;
        let req = GenerateRequest {
            prompt_ids: m.tokenizer.encode(&prompt, false)?,
            max_new_tokens: a.sampling.max_tokens,
            sampling: super::sampling(&a.sampling),
            stop_strings: a.sampling.stop.clone(),
            stop_on_eos: !a.sampling.ignore_eos,
            guide: guide.clone(),
        };
        // A grammar constrains the answer from its first token: no reasoning.
        let splitter = match (&reasoning, &guide) {
            (Ok(r), None) => Some(r.splitter(&prompt)),
            _ => None,
        };
        let mut answer = Answer::new(splitter, show, tty);
        // Each turn re-renders the whole conversation; the engine's prefix
        // cache serves what the template left unchanged, the rest is
        // prefilled.
        let mut out = std::io::stdout().lock();
        let res = generate(&mut engine, &m.tokenizer, &req, &mut |s| {
            answer
                .push(&mut out, s)
                .map_err(|e| mm_core::Error::Other(format!("writing stdout: {e}")))
        });
        answer.finish(&mut out)?;
        writeln!(out)?;
        match res {
            Ok(r) => {
                super::report(&r.stats);
                let mut reply = ChatMessage::assistant(answer.content.trim());
                if !answer.reasoning.is_empty() {
                    reply = reply.with_reasoning(answer.reasoning);
                }
                history.push(reply);
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

/// Dim on, and off followed by a blank line (ANSI SGR).
const DIM: &str = "\x1b[2m";
const UNDIM: &str = "\x1b[0m\n\n";

/// One answer as it streams: split (for a reasoning model), printed, kept.
struct Answer {
    splitter: Option<ReasoningSplitter>,
    show: bool,
    tty: bool,
    /// Reasoning is being printed (its opening was written).
    open: bool,
    reasoning: String,
    content: String,
}

impl Answer {
    fn new(splitter: Option<ReasoningSplitter>, show: bool, tty: bool) -> Self {
        Self {
            splitter,
            show,
            tty,
            open: false,
            reasoning: String::new(),
            content: String::new(),
        }
    }

    fn push(&mut self, out: &mut impl Write, text: &str) -> std::io::Result<()> {
        let split = match &mut self.splitter {
            Some(s) => s.push(text),
            None => Split::content_only(text),
        };
        self.write(out, split)
    }

    /// Prints what the splitter still holds and closes the reasoning.
    fn finish(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        if let Some(held) = self.splitter.as_mut().map(|s| s.finish()) {
            self.write(out, held)?;
        }
        self.close(out)?;
        out.flush()
    }

    fn write(&mut self, out: &mut impl Write, split: Split) -> std::io::Result<()> {
        if !split.reasoning.is_empty() {
            if self.show {
                if !self.open {
                    out.write_all(if self.tty { DIM } else { "<think>\n" }.as_bytes())?;
                    self.open = true;
                }
                out.write_all(split.reasoning.as_bytes())?;
            }
            self.reasoning.push_str(&split.reasoning);
        }
        if !split.content.is_empty() {
            self.close(out)?;
            out.write_all(split.content.as_bytes())?;
            self.content.push_str(&split.content);
        }
        out.flush()
    }

    fn close(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        if self.open {
            self.open = false;
            out.write_all(if self.tty { UNDIM } else { "\n</think>\n\n" }.as_bytes())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mm_engine::reasoning::Section;

    fn shown(show: bool, tty: bool, pieces: &[&str]) -> (String, Answer) {
        let splitter = ReasoningConfig::think(Section::Content).splitter("<|assistant|>");
        let mut a = Answer::new(Some(splitter), show, tty);
        let mut out = Vec::new();
        for p in pieces {
            a.push(&mut out, p).unwrap();
        }
        a.finish(&mut out).unwrap();
        (String::from_utf8(out).unwrap(), a)
    }

    #[test]
    fn reasoning_is_dimmed_on_a_terminal() {
        let pieces = [
            "<th",
            "ink>Let me",
            " think.</",
            "think>\n\nThe answer",
            "!",
        ];
        let (out, a) = shown(true, true, &pieces);
        assert_eq!(out, "\x1b[2mLet me think.\x1b[0m\n\nThe answer!");
        assert_eq!(
            (a.reasoning.as_str(), a.content.as_str()),
            ("Let me think.", "The answer!")
        );
        let (out, _) = shown(false, true, &pieces);
        assert_eq!(out, "The answer!");
        // A block that never closes is closed on the screen.
        let (out, _) = shown(true, true, &["<think>Hmm"]);
        assert_eq!(out, "\x1b[2mHmm\x1b[0m\n\n");
        let (out, _) = shown(true, false, &["<think>Hmm"]);
        assert_eq!(out, "<think>\nHmm\n</think>\n\n");
    }
}
