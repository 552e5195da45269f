//! Reasoning ("thinking") split from the answer, for models that write
//! their reasoning between tags (`<think>`…`</think>`: Qwen3, GLM-4.5 and
//! later, DeepSeek-R1).
//!
//! [`ReasoningConfig::detect`] decides whether a model's output is split at
//! all (a [`ReasoningParser`] setting plus the tokenizer and chat template);
//! [`ReasoningConfig::splitter`] reads the rendered prompt to tell whether
//! generation starts inside a reasoning block (the template may have
//! written the opening tag, or an empty closed block to switch thinking
//! off) and returns a [`ReasoningSplitter`]: text deltas in, `(reasoning,
//! content)` deltas out, tags split across deltas held back until decided.
//!
//! The output holds at most one reasoning block, at its start:
//! * leading whitespace is dropped, then an opening tag, if the output
//!   starts with one, opens the block;
//! * otherwise the output starts in the section the prompt left open
//!   (reasoning when the prompt's last tag is an opening tag, so a closing
//!   tag without an opening one ends reasoning that began with the output);
//! * the first closing tag ends the block; every later tag is plain content;
//! * reasoning loses its leading and trailing whitespace, content its
//!   leading whitespace; the tags themselves are never shown;
//! * a block that never closes leaves all the output as reasoning.
//!
//! Any split of a text into deltas gives the same result as the whole text.

use std::str::FromStr;

use crate::tokenizer::Tokenizer;

/// The tag that opens a reasoning block, unless the model says otherwise.
pub const DEFAULT_OPEN: &str = "<think>";
/// The tag that closes a reasoning block.
pub const DEFAULT_CLOSE: &str = "</think>";

/// Which models get their reasoning split (`--reasoning-parser`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReasoningParser {
    /// Split when the tokenizer has both tags as tokens or the chat
    /// template writes them.
    #[default]
    Auto,
    /// Never split: reasoning stays in the content, tags included.
    None,
    /// Always split (`qwen3`, `glm45`); where the prompt does not say,
    /// generation starts in the content.
    Think,
    /// Always split (`deepseek_r1`); where the prompt does not say,
    /// generation starts inside reasoning (DeepSeek-R1 may leave out the
    /// opening tag).
    DeepSeekR1,
}

impl ReasoningParser {
    /// The names [`FromStr`] accepts.
    pub const NAMES: &'static [&'static str] = &["auto", "none", "qwen3", "glm45", "deepseek_r1"];
}

impl FromStr for ReasoningParser {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "none" => Ok(Self::None),
            "qwen3" | "glm45" => Ok(Self::Think),
            "deepseek_r1" => Ok(Self::DeepSeekR1),
            other => Err(format!(
                "unknown reasoning parser {other:?}: use one of {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// Which part of the output text is being written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Reasoning,
    Content,
}

/// A piece of output, split.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub reasoning: String,
    pub content: String,
}

impl Split {
    /// All content (text of a model whose reasoning is not split).
    pub fn content_only(text: impl Into<String>) -> Self {
        Self {
            reasoning: String::new(),
            content: text.into(),
        }
    }

    fn add(&mut self, other: Split) {
        self.reasoning.push_str(&other.reasoning);
        self.content.push_str(&other.content);
    }
}

/// How one model's output is split: its tags, and where generation starts
/// when the prompt does not say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReasoningConfig {
    pub open: String,
    pub close: String,
    /// The section generation starts in when the prompt leaves no block
    /// open and did not just close one.
    pub default_start: Section,
}

impl ReasoningConfig {
    /// `<think>`/`</think>`, starting in `default_start`.
    pub fn think(default_start: Section) -> Self {
        Self {
            open: DEFAULT_OPEN.into(),
            close: DEFAULT_CLOSE.into(),
            default_start,
        }
    }

    /// The split `parser` asks for on a model with tokenizer `tok`, or why
    /// there is none (for a log line). Tags that are special tokens of the
    /// tokenizer are left out of decoded text, so they cannot be split on.
    pub fn detect(parser: ReasoningParser, tok: &Tokenizer) -> Result<Self, String> {
        let cfg = match parser {
            ReasoningParser::None => return Err("reasoning parser: none".into()),
            ReasoningParser::Think => Self::think(Section::Content),
            ReasoningParser::DeepSeekR1 => Self::think(Section::Reasoning),
            ReasoningParser::Auto => {
                let cfg = Self::think(Section::Content);
                let in_vocab =
                    tok.token_id(&cfg.open).is_some() && tok.token_id(&cfg.close).is_some();
                let in_template = tok
                    .chat_template()
                    .is_some_and(|t| t.contains(&cfg.open) && t.contains(&cfg.close));
                if !in_vocab && !in_template {
                    return Err(format!(
                        "neither the vocabulary nor the chat template has {} and {}",
                        cfg.open, cfg.close
                    ));
                }
                cfg
            }
        };
        for tag in [&cfg.open, &cfg.close] {
            if tok.token_id(tag).is_some_and(|id| tok.is_special(id)) {
                return Err(format!(
                    "{tag} is a special token, left out of decoded text, so reasoning cannot be split on it"
                ));
            }
        }
        Ok(cfg)
    }

    /// Where generation starts after `prompt` (the rendered chat): inside
    /// reasoning when the prompt's last tag opens a block; in the content
    /// when it closes one with nothing but whitespace after it (thinking
    /// switched off); else [`default_start`](Self::default_start).
    pub fn start_for(&self, prompt: &str) -> Section {
        let open = prompt.rfind(self.open.as_str());
        let close = prompt.rfind(self.close.as_str());
        match (open, close) {
            (Some(o), Some(c)) if o > c => Section::Reasoning,
            (Some(_), None) => Section::Reasoning,
            (_, Some(c)) if prompt[c + self.close.len()..].trim().is_empty() => Section::Content,
            _ => self.default_start,
        }
    }

    /// A splitter for the output that follows `prompt`.
    pub fn splitter(&self, prompt: &str) -> ReasoningSplitter {
        ReasoningSplitter::new(
            self.open.clone(),
            self.close.clone(),
            self.start_for(prompt),
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace yet: an opening tag may come.
    Lead,
    /// In the block; `fresh` until it has shown text.
    Reasoning { fresh: bool },
    /// After the block (or without one); `fresh` until it has shown text.
    Content { fresh: bool },
}

/// Incremental splitter; see the module documentation.
#[derive(Clone, Debug)]
pub struct ReasoningSplitter {
    open: String,
    close: String,
    start: Section,
    state: State,
    /// Text not yet decided: a possible tag, or whitespace that may end
    /// the reasoning.
    pending: String,
}

impl ReasoningSplitter {
    /// A splitter on tags `open`/`close` whose output starts in `start`
    /// unless it begins with `open`. Empty tags are never matched.
    pub fn new(open: String, close: String, start: Section) -> Self {
        Self {
            open,
            close,
            start,
            state: State::Lead,
            pending: String::new(),
        }
    }

    /// Splits a whole output.
    pub fn split_all(mut self, text: &str) -> Split {
        let mut out = self.push(text);
        out.add(self.finish());
        out
    }

    /// Adds a delta of the output; returns what can be shown now.
    pub fn push(&mut self, delta: &str) -> Split {
        self.pending.push_str(delta);
        let mut out = Split::default();
        loop {
            match self.state {
                State::Lead => {
                    let rest = self.pending.trim_start();
                    if !self.open.is_empty() && rest.starts_with(self.open.as_str()) {
                        let cut = self.pending.len() - rest.len() + self.open.len();
                        self.pending.drain(..cut);
                        self.state = State::Reasoning { fresh: true };
                    } else if !self.open.is_empty() && self.open.starts_with(rest) {
                        // Whitespace, or the start of an opening tag: wait.
                        return out;
                    } else {
                        self.state = match self.start {
                            Section::Reasoning => State::Reasoning { fresh: true },
                            Section::Content => State::Content { fresh: true },
                        };
                    }
                }
                State::Reasoning { fresh: true } | State::Content { fresh: true } => {
                    // A section starts with its first non-whitespace text.
                    trim_start_in_place(&mut self.pending);
                    if self.pending.is_empty() {
                        return out;
                    }
                    self.state = match self.state {
                        State::Reasoning { .. } => State::Reasoning { fresh: false },
                        _ => State::Content { fresh: false },
                    };
                }
                State::Reasoning { fresh: false } => {
                    let found = (!self.close.is_empty())
                        .then(|| self.pending.find(self.close.as_str()))
                        .flatten();
                    if let Some(i) = found {
                        out.reasoning.push_str(self.pending[..i].trim_end());
                        self.pending.drain(..i + self.close.len());
                        self.state = State::Content { fresh: true };
                        continue;
                    }
                    // Hold back a possible start of the closing tag, and the
                    // whitespace before it (it would be trimmed at the tag).
                    let hold = longest_suffix_prefix(&self.pending, &self.close);
                    let cut = self.pending[..self.pending.len() - hold].trim_end().len();
                    out.reasoning.push_str(&self.pending[..cut]);
                    self.pending.drain(..cut);
                    return out;
                }
                State::Content { fresh: false } => {
                    out.content.push_str(&self.pending);
                    self.pending.clear();
                    return out;
                }
            }
        }
    }

    /// Ends the output: returns what was held back (a partial tag is
    /// text; whitespace at the end of reasoning is dropped) and resets the
    /// splitter for another output after the same prompt.
    pub fn finish(&mut self) -> Split {
        let mut out = Split::default();
        let rest = std::mem::take(&mut self.pending);
        // Lead and fresh states hold no text before what is left.
        let rest = match self.state {
            State::Lead | State::Reasoning { fresh: true } | State::Content { fresh: true } => {
                rest.trim_start()
            }
            _ => &rest,
        };
        let section = match self.state {
            State::Lead => self.start,
            State::Reasoning { .. } => Section::Reasoning,
            State::Content { .. } => Section::Content,
        };
        match section {
            Section::Reasoning => out.reasoning.push_str(rest.trim_end()),
            Section::Content => out.content.push_str(rest),
        }
        self.state = State::Lead;
        out
    }
}

fn trim_start_in_place(s: &mut String) {
    let n = s.len() - s.trim_start().len();
    s.drain(..n);
}

/// Length of the longest proper prefix of `tag` that `text` ends with.
fn longest_suffix_prefix(text: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .filter(|&k| tag.is_char_boundary(k))
        .find(|&k| text.ends_with(&tag[..k]))
        .unwrap_or(0)
}

#[cfg(test)]
#[path = "reasoning_tests.rs"]
mod tests;
