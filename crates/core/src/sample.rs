//! Token selection from a row of logits: the one definition every backend
//! and the engine's host sampler share.
//!
//! Order (transformers' for the shared steps, the OpenAI penalties as vLLM
//! applies them): logit bias (entries in list order) → repetition penalty
//! (the distinct tokens of the window: positive logits divided, others
//! multiplied) → presence/frequency penalties (`presence + frequency·n`
//! subtracted from each produced token's logit) → greedy arg-max, or
//! temperature → top-k → top-p → min-p → a draw at `r`. Token ids outside
//! the vocabulary are ignored by every list.
//!
//! The draw: candidates sorted by value (descending; ties to the lower id),
//! `exp(v − max)` normalised by their sum, the shortest prefix whose
//! cumulative probability reaches `top_p`, then those with probability at
//! least `min_p` times the best one's (at least one), and the first
//! candidate whose cumulative probability reaches `r` times the kept total
//! (the last one when rounding leaves none). Sums run in f32 in candidate
//! order, as the engine's sampler always did, so a seed reproduces.
//!
//! Non-finite values: greedy keeps the host arg-max (NaN is never larger,
//! except that a NaN at index 0 stays the pick: [`argmax`]). A draw never
//! picks a NaN; when the largest value is +∞ the +∞ candidates share the
//! probability; a row whose every value is NaN or −∞ has nothing to draw
//! from and is an error.

use crate::{Error, Result};

/// One row of a [`crate::Backend::sample`] call: the parameters, penalty
/// lists and random number of one sequence's next token.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleRow {
    /// The logits row this samples from.
    pub row: usize,
    /// `<= 0`: greedy.
    pub temperature: f32,
    /// 0 (or at least the vocabulary) keeps every candidate.
    pub top_k: usize,
    /// In (0, 1]; 1 disables.
    pub top_p: f32,
    /// In [0, 1]; 0 disables.
    pub min_p: f32,
    /// `> 0`; 1 disables.
    pub repeat_penalty: f32,
    /// The distinct tokens of the repetition window (any order).
    pub repeat_tokens: Vec<u32>,
    /// Finite; 0 disables (with `frequency_penalty`).
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// `(token, times the sequence produced it)`, distinct tokens.
    pub produced: Vec<(u32, u32)>,
    /// `(token, bias)`: added first, in list order.
    pub logit_bias: Vec<(u32, f32)>,
    /// Uniform in [0, 1), drawn on the host from the request's own random
    /// stream (ignored by greedy rows).
    pub r: f32,
}

impl Default for SampleRow {
    fn default() -> Self {
        Self {
            row: 0,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_tokens: Vec::new(),
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            produced: Vec::new(),
            logit_bias: Vec::new(),
            r: 0.0,
        }
    }
}

impl SampleRow {
    /// Whether this row draws (temperature > 0) rather than taking the
    /// arg-max.
    pub fn draws(&self) -> bool {
        self.temperature > 0.0
    }

    /// Whether the presence/frequency penalties apply.
    pub fn penalizes_produced(&self) -> bool {
        self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }

    /// What the presence and frequency penalties subtract from the logit
    /// of a token produced `n` times (f32, as every backend computes it).
    pub fn produced_penalty(&self, n: u32) -> f32 {
        self.presence_penalty + self.frequency_penalty * n as f32
    }

    /// Rejects parameters no backend can sample with.
    pub fn check(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Invalid(format!("sample: {what}")));
        if !self.temperature.is_finite() {
            return bad(format!("temperature {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top-p {} outside (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min-p {} outside [0, 1]", self.min_p));
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            return bad(format!("repeat penalty {}", self.repeat_penalty));
        }
        if !self.presence_penalty.is_finite() || !self.frequency_penalty.is_finite() {
            return bad(format!(
                "presence/frequency penalties {} / {}",
                self.presence_penalty, self.frequency_penalty
            ));
        }
        if let Some((t, b)) = self.logit_bias.iter().find(|(_, b)| !b.is_finite()) {
            return bad(format!("logit bias {b} of token {t}"));
        }
        if !(0.0..1.0).contains(&self.r) {
            return bad(format!("random number {} outside [0, 1)", self.r));
        }
        Ok(())
    }

    /// Applies the logit bias and the penalties to `l` (one row), in the
    /// order of the module docs.
    pub fn apply_penalties(&self, l: &mut [f32]) {
        for &(t, b) in &self.logit_bias {
            if let Some(v) = l.get_mut(t as usize) {
                *v += b;
            }
        }
        if self.repeat_penalty != 1.0 {
            for &t in &self.repeat_tokens {
                if let Some(v) = l.get_mut(t as usize) {
                    *v = if *v > 0.0 {
                        *v / self.repeat_penalty
                    } else {
                        *v * self.repeat_penalty
                    };
                }
            }
        }
        if self.penalizes_produced() {
            for &(t, n) in &self.produced {
                if let Some(v) = l.get_mut(t as usize) {
                    *v -= self.produced_penalty(n);
                }
            }
        }
    }
}

/// The token `row` picks from `logits` (one row of the vocabulary): the
/// module docs' arithmetic. Errors: an empty row, invalid parameters, a
/// drawing row without a finite or +∞ value.
pub fn sample_row(logits: &[f32], row: &SampleRow) -> Result<u32> {
    row.check()?;
    if logits.is_empty() {
        return Err(Error::Invalid("sample: a vocabulary of 0 tokens".into()));
    }
    let mut l = logits.to_vec();
    row.apply_penalties(&mut l);
    if !row.draws() {
        return Ok(argmax(&l));
    }
    let cand = candidates(&l, row.temperature, row.top_k);
    let Some(&(_, mx)) = cand.first() else {
        return Err(no_candidate(row));
    };
    if mx == f32::NEG_INFINITY {
        return Err(no_candidate(row));
    }
    let weight = |v: f32| {
        if mx == f32::INFINITY {
            (v == f32::INFINITY) as u8 as f32
        } else {
            (v - mx).exp()
        }
    };
    let mut probs: Vec<f32> = cand.iter().map(|c| weight(c.1)).collect();
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    if row.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= row.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
    }
    if row.min_p > 0.0 {
        let thr = probs[0] * row.min_p;
        let keep = probs.iter().take_while(|&&p| p >= thr).count().max(1);
        probs.truncate(keep);
    }
    let total: f32 = probs.iter().sum();
    let mut r = row.r * total;
    for (i, p) in probs.iter().enumerate() {
        r -= p;
        if r <= 0.0 {
            return Ok(cand[i].0);
        }
    }
    Ok(cand[probs.len() - 1].0)
}

/// The tokens `rows` pick from `logits` (`[rows, vocab]`, row-major), one
/// after another: the reference every backend's `sample` is checked
/// against.
pub fn sample_rows(logits: &[f32], vocab: usize, rows: &[SampleRow]) -> Result<Vec<u32>> {
    check_rows(logits.len(), vocab, rows)?;
    rows.iter()
        .map(|r| sample_row(&logits[r.row * vocab..(r.row + 1) * vocab], r))
        .collect()
}

/// Checks a `sample` call: `len` logits values of rows of `vocab`, and
/// every row's parameters. Returns the number of logits rows. Every
/// backend's `sample` checks its input with this.
pub fn check_rows(len: usize, vocab: usize, rows: &[SampleRow]) -> Result<usize> {
    if vocab == 0 {
        return Err(Error::Invalid("sample: a vocabulary of 0 tokens".into()));
    }
    if !len.is_multiple_of(vocab) {
        return Err(Error::Invalid(format!(
            "sample: {len} logits are not rows of {vocab}"
        )));
    }
    let n = len / vocab;
    if vocab > u32::MAX as usize / 2 {
        return Err(Error::Invalid(format!(
            "sample: a vocabulary of {vocab} tokens"
        )));
    }
    for r in rows {
        if r.row >= n {
            return Err(Error::Invalid(format!(
                "sample: row {} of {n} logits rows",
                r.row
            )));
        }
        r.check()?;
    }
    Ok(n)
}

/// The draw's candidates `(id, l / temperature)` of the penalized row `l`:
/// NaN dropped, sorted by value descending (ties to the lower id), the
/// first `top_k` (0: all).
pub fn candidates(l: &[f32], temperature: f32, top_k: usize) -> Vec<(u32, f32)> {
    let mut cand: Vec<(u32, f32)> = l
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, v / temperature))
        .filter(|c| !c.1.is_nan())
        .collect();
    let by_value = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    // Only the first top_k candidates are ever read: select them, then
    // sort those (the same order as sorting all).
    if top_k > 0 && top_k < cand.len() {
        cand.select_nth_unstable_by(top_k - 1, by_value);
        cand.truncate(top_k);
    }
    cand.sort_unstable_by(by_value);
    cand
}

fn no_candidate(row: &SampleRow) -> Error {
    Error::Invalid(format!(
        "sample: logits row {} has no finite value to draw from (all NaN or -inf)",
        row.row
    ))
}

/// Index of the largest value (the first on ties, as torch.argmax). A NaN
/// is never larger than anything; a NaN at index 0 is kept as the pick
/// (nothing compares larger than it).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
#[path = "sample_tests.rs"]
mod tests;
