//! Token sampling: logit bias → repetition penalty → presence/frequency
//! penalties → greedy, or temperature → top-k → top-p → min-p → a draw
//! from a seeded generator (transformers' order for the shared steps; the
//! OpenAI penalties as vLLM applies them). The arithmetic is
//! [`mm_core::sample`]'s; this keeps a request's parameters, random stream
//! and produced-token counts.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use mm_core::sample::argmax;
use mm_core::sample::sample_row;
use mm_core::{Error, Result, SampleRow};

/// Sampling settings. `temperature <= 0` means greedy.
#[derive(Clone, Debug)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    /// 1.0 disables; >1 penalizes tokens seen in the last `repeat_last_n`.
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    /// OpenAI `presence_penalty` in [-2, 2] (0 disables): subtracted once
    /// from the logit of every token this sampler already produced.
    pub presence_penalty: f32,
    /// OpenAI `frequency_penalty` in [-2, 2] (0 disables): subtracted from
    /// a token's logit once per time this sampler already produced it.
    pub frequency_penalty: f32,
    /// Added to the logits of these token ids before anything else (OpenAI
    /// `logit_bias`; ids outside the vocabulary are ignored).
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Rejects values outside their meaningful ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top-p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min-p must be in [0, 1], got {}", self.min_p));
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            return bad(format!(
                "repeat penalty must be > 0, got {}",
                self.repeat_penalty
            ));
        }
        for (name, v) in [
            ("presence penalty", self.presence_penalty),
            ("frequency penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(format!("{name} must be in [-2, 2], got {v}"));
            }
        }
        if let Some((t, b)) = self.logit_bias.iter().find(|(_, b)| !b.is_finite()) {
            return bad(format!("logit bias of token {t} must be finite, got {b}"));
        }
        Ok(())
    }
}

/// A sampler with its own random stream. It counts the tokens it produced
/// (every sampled token is taken to be appended to the sequence), which
/// the presence and frequency penalties use. The selection itself is
/// [`mm_core::sample`], shared with every backend's `sample` op: a row
/// built by [`Sampler::row`] picks on the device the token
/// [`Sampler::sample`] picks on the host.
pub struct Sampler {
    p: SamplingParams,
    rng: StdRng,
    produced: HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(p: SamplingParams) -> Result<Self> {
        p.validate()?;
        Ok(Self {
            rng: StdRng::seed_from_u64(p.seed),
            p,
            produced: HashMap::new(),
        })
    }

    /// Picks the next token from `logits` given the tokens so far. Errors:
    /// an empty row, or a drawing row with nothing to draw (every value
    /// NaN or −∞).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32> {
        let row = self.row(history, 0);
        let t = sample_row(logits, &row)?;
        self.accept(t);
        Ok(t)
    }

    /// The next token's [`SampleRow`] for logits row `row`, given the
    /// tokens so far; draws its random number from this sampler's stream
    /// (one draw per token when the temperature is above 0, as
    /// [`Sampler::sample`] does). Follow it with [`Sampler::accept`] of
    /// the token it picked.
    pub fn row(&mut self, history: &[u32], row: usize) -> SampleRow {
        let p = &self.p;
        let mut repeat_tokens = Vec::new();
        if p.repeat_penalty != 1.0 {
            let start = history.len().saturating_sub(p.repeat_last_n);
            repeat_tokens = history[start..].to_vec();
            repeat_tokens.sort_unstable();
            repeat_tokens.dedup();
        }
        let mut r = SampleRow {
            row,
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            min_p: p.min_p,
            repeat_penalty: p.repeat_penalty,
            repeat_tokens,
            presence_penalty: p.presence_penalty,
            frequency_penalty: p.frequency_penalty,
            produced: Vec::new(),
            logit_bias: p.logit_bias.clone(),
            r: 0.0,
        };
        if r.penalizes_produced() {
            r.produced = self.produced.iter().map(|(&t, &n)| (t, n)).collect();
        }
        if r.draws() {
            r.r = self.rng.gen::<f32>();
        }
        r
    }

    /// Records `token` as produced (the presence/frequency penalties).
    pub fn accept(&mut self, token: u32) {
        *self.produced.entry(token).or_insert(0) += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_max_and_first_tie() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0], &[]).unwrap(), 1);
    }

    #[test]
    fn seed_reproduces_and_top_k_one_is_greedy() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let p = SamplingParams {
            temperature: 1.0,
            seed: 7,
            ..Default::default()
        };
        let run = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone()).unwrap();
            (0..20)
                .map(|_| s.sample(&logits, &[]).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(&p), run(&p));
        let k1 = SamplingParams {
            top_k: 1,
            ..p.clone()
        };
        assert!(run(&k1).iter().all(|&t| t == argmax(&logits)));
    }

    #[test]
    fn top_p_and_min_p_restrict_candidates() {
        // probabilities ~ [0.64, 0.24, 0.09, 0.03]
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            seed: 1,
            ..Default::default()
        };
        let mut s = Sampler::new(p).unwrap();
        assert!((0..200).all(|_| s.sample(&logits, &[]).unwrap() == 0));
        let p = SamplingParams {
            temperature: 1.0,
            min_p: 0.3,
            seed: 1,
            ..Default::default()
        };
        let mut s = Sampler::new(p).unwrap();
        let drawn: Vec<u32> = (0..500).map(|_| s.sample(&logits, &[]).unwrap()).collect();
        assert!(drawn.iter().all(|&t| t <= 1) && drawn.contains(&1));
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let mut s = Sampler::new(SamplingParams {
            repeat_penalty: 2.0,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.sample(&[2.0, 1.5], &[0]).unwrap(), 1);
    }

    #[test]
    fn logit_bias_shifts_the_choice() {
        let mut s = Sampler::new(SamplingParams {
            logit_bias: vec![(1, 5.0), (99, 1.0)],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.sample(&[2.0, 1.5, 0.0], &[]).unwrap(), 1);
        let mut s = Sampler::new(SamplingParams {
            logit_bias: vec![(0, -100.0)],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.sample(&[2.0, 1.5, 0.0], &[]).unwrap(), 1);
    }

    #[test]
    fn presence_penalty_counts_own_outputs_once() {
        // The prompt (history) does not count; the first pick is token 0,
        // then the 0.6 presence penalty puts token 1 ahead, then both are
        // penalized once and token 0 leads again.
        let logits = [2.0f32, 1.5, 0.0];
        let mut s = Sampler::new(SamplingParams {
            presence_penalty: 0.6,
            ..Default::default()
        })
        .unwrap();
        let picks: Vec<u32> = (0..4)
            .map(|_| s.sample(&logits, &[0, 0, 0]).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 0, 0]);
    }

    #[test]
    fn frequency_penalty_grows_with_each_repeat() {
        // 2.0 - 0.2 n < 1.5 once token 0 was produced 3 times.
        let logits = [2.0f32, 1.5, 0.0];
        let mut s = Sampler::new(SamplingParams {
            frequency_penalty: 0.2,
            ..Default::default()
        })
        .unwrap();
        let picks: Vec<u32> = (0..4).map(|_| s.sample(&logits, &[]).unwrap()).collect();
        assert_eq!(picks, vec![0, 0, 0, 1]);
        // A negative penalty encourages repeats.
        let mut s = Sampler::new(SamplingParams {
            frequency_penalty: -1.0,
            logit_bias: vec![(1, 1.0)],
            ..Default::default()
        })
        .unwrap();
        let picks: Vec<u32> = (0..3).map(|_| s.sample(&logits, &[]).unwrap()).collect();
        assert_eq!(picks, vec![1, 1, 1]);
    }

    #[test]
    fn invalid_params_are_errors() {
        for p in [
            SamplingParams {
                presence_penalty: 2.5,
                ..Default::default()
            },
            SamplingParams {
                frequency_penalty: f32::NAN,
                ..Default::default()
            },
            SamplingParams {
                logit_bias: vec![(0, f32::INFINITY)],
                ..Default::default()
            },
        ] {
            assert!(Sampler::new(p).is_err());
        }
        assert!(Sampler::new(SamplingParams {
            top_p: 0.0,
            ..Default::default()
        })
        .is_err());
        assert!(Sampler::new(SamplingParams {
            temperature: f32::NAN,
            ..Default::default()
        })
        .is_err());
    }
}
