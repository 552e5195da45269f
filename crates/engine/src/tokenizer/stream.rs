//! Streaming detokenization: text for ids as they are generated.
//!
//! Decoding one id at a time is wrong twice over: a token may hold part of a
//! UTF-8 character (byte-level BPE, `<0xNN>` byte fallback), and a
//! sentencepiece decoder strips the leading space of the first token it sees,
//! so spaces between words would vanish. Instead the decoder keeps a short
//! window of ids — the last fully decoded chunk as context plus the new ids —
//! decodes the window, and emits only text past what it already emitted, and
//! only up to the end of the text that can no longer change (a trailing U+FFFD
//! may be an incomplete character and waits for the next id). This is the
//! prefix-offset technique of text-generation-inference / `TextStreamer`.

use mm_core::Result;

use super::Tokenizer;

/// Past this many ids without a complete character, trailing U+FFFD are
/// taken as final (the model really produced invalid bytes).
const MAX_PENDING: usize = 16;

/// Incremental decoder; see the module documentation.
pub struct StreamDecoder {
    tokenizer: Tokenizer,
    skip_special: bool,
    /// The window: context ids followed by the ids not yet fully emitted.
    ids: Vec<u32>,
    /// Where the last complete (no trailing U+FFFD) decode of the window ended.
    boundary: usize,
    /// The text of the window already emitted (a prefix of its decode).
    emitted: String,
}

impl StreamDecoder {
    /// A decoder for `tokenizer`; `skip_special` leaves special tokens out.
    pub fn new(tokenizer: Tokenizer, skip_special: bool) -> Self {
        Self {
            tokenizer,
            skip_special,
            ids: Vec::new(),
            boundary: 0,
            emitted: String::new(),
        }
    }

    /// Adds one id; returns the text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.tokenizer.check_ids(&[id])?;
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, self.skip_special)?;
        let complete = !text.ends_with('\u{FFFD}') || self.ids.len() - self.boundary > MAX_PENDING;
        let stable = if complete {
            text.len()
        } else {
            text.trim_end_matches('\u{FFFD}').len()
        };

        let piece = self.take(&text, stable);
        if complete {
            self.slide()?;
        }
        Ok(piece)
    }

    /// Adds several ids; returns the text they complete, if any.
    pub fn push_all(&mut self, ids: &[u32]) -> Result<Option<String>> {
        let mut out = String::new();
        for &id in ids {
            if let Some(s) = self.push(id)? {
                out.push_str(&s);
            }
        }
        Ok((!out.is_empty()).then_some(out))
    }

    /// Ends the stream: returns whatever text is still held back (an
    /// incomplete character decodes as U+FFFD) and resets the decoder.
    pub fn finish(&mut self) -> Result<Option<String>> {
        let piece = if self.ids.is_empty() {
            None
        } else {
            let text = self.tokenizer.decode(&self.ids, self.skip_special)?;
            self.take(&text, text.len())
        };
        self.reset();
        Ok(piece)
    }

    /// Forgets everything, for a new sequence.
    pub fn reset(&mut self) {
        self.ids.clear();
        self.boundary = 0;
        self.emitted.clear();
    }

    /// Emits `text[emitted..stable]`. If the decoder changed text it already
    /// emitted (decoders that are not prefix-stable), it resumes after the
    /// common part without repeating it.
    fn take(&mut self, text: &str, stable: usize) -> Option<String> {
        if !text.starts_with(self.emitted.as_str()) {
            tracing::debug!(
                "stream decoder: decoded text changed after it was emitted; resynchronizing"
            );
            // What was emitted cannot be taken back: continue after as many bytes.
            let mut skip = self.emitted.len().min(text.len());
            while !text.is_char_boundary(skip) {
                skip -= 1;
            }
            self.emitted = text[..skip].to_string();
        }
        let start = self.emitted.len();
        if stable <= start {
            return None;
        }
        let piece = text[start..stable].to_string();
        self.emitted.push_str(&piece);
        Some(piece)
    }

    /// After a complete decode: the chunk since the previous boundary becomes
    /// the whole context, unless it decodes to nothing (only skipped special
    /// tokens), which would lose the context a leading space needs.
    fn slide(&mut self) -> Result<()> {
        if self.boundary > 0 {
            let context = self
                .tokenizer
                .decode(&self.ids[self.boundary..], self.skip_special)?;
            if !context.is_empty() {
                self.ids.drain(..self.boundary);
                self.emitted = context;
            }
        }
        self.boundary = self.ids.len();
        Ok(())
    }
}
