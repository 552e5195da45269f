//! The generation loop: prefill the prompt, then decode token by token,
//! streaming text that never splits a UTF-8 character or shows a stop string.

use std::time::Instant;

use mm_core::{Error, Result};
use mm_models::{DecoderModel, KvCache};

use crate::constrain::Guide;
use crate::sampler::{Sampler, SamplingParams};
use crate::stop::StopFilter;
use crate::tokenizer::Tokenizer;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops before any of these strings would be emitted.
    pub stop_strings: Vec<String>,
    /// Stop on the tokenizer's end-of-sequence tokens.
    pub stop_on_eos: bool,
    /// Structured output: only tokens this grammar accepts are sampled;
    /// generation ends when the output is complete (EOS ends it even
    /// without `stop_on_eos`).
    pub guide: Option<Guide>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Eos,
    StopString,
    /// `max_new_tokens` reached, or the context is full.
    Length,
    /// The constrained output is complete (its grammar admits no more).
    Grammar,
}

/// Token counts and timings of one generation.
#[derive(Clone, Debug, Default)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
}

impl GenerateStats {
    pub fn prefill_tok_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_secs.max(1e-9)
    }
    /// Decode rate over the tokens after the first (which prefill produced).
    pub fn decode_tok_s(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode_secs.max(1e-9)
    }
}

/// Result of a generation.
#[derive(Clone, Debug)]
pub struct GenerateOutput {
    pub ids: Vec<u32>,
    pub text: String,
    pub stop: StopReason,
    pub stats: GenerateStats,
}

/// Generates from `req`, calling `on_text` with each new piece of text.
pub fn generate(
    model: &DecoderModel,
    tok: &Tokenizer,
    cache: &mut KvCache,
    req: &GenerateRequest,
    on_text: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<GenerateOutput> {
    let ctx = cache.capacity();
    let n_prompt = req.prompt_ids.len();
    if n_prompt == 0 {
        return Err(Error::Invalid("the prompt is empty (no tokens)".into()));
    }
    if cache.len() + n_prompt >= ctx {
        return Err(Error::ContextOverflow {
            prompt: cache.len() + n_prompt,
            requested: req.max_new_tokens,
            context: ctx,
        });
    }
    let mut sampler = Sampler::new(req.sampling.clone())?;
    let mut guide = req.guide.clone();
    let eos: &[u32] = match &guide {
        Some(g) if !req.stop_on_eos => g.eos_ids(),
        _ if req.stop_on_eos => tok.eos_ids(),
        _ => &[],
    };
    let eos = eos.to_vec();
    let mut stats = GenerateStats {
        prompt_tokens: n_prompt,
        ..Default::default()
    };
    let mut history = req.prompt_ids.clone();
    let mut decoder = tok.stream_decoder(false);
    let mut filter = StopFilter::new(req.stop_strings.clone());
    let (mut ids, mut text) = (Vec::new(), String::new());
    let mut emit = |s: &str, text: &mut String| -> Result<()> {
        if !s.is_empty() {
            text.push_str(s);
            on_text(s)?;
        }
        Ok(())
    };

    let t0 = Instant::now();
    let logits = model.forward(&req.prompt_ids, cache, false)?.to_vec()?;
    stats.prefill_secs = t0.elapsed().as_secs_f64();
    let mut next = pick(&mut sampler, &mut guide, &logits, &history);
    let t1 = Instant::now();
    let mut stop = StopReason::Length;
    while ids.len() < req.max_new_tokens {
        if eos.contains(&next) {
            stop = StopReason::Eos;
            break;
        }
        ids.push(next);
        history.push(next);
        if let Some(piece) = decoder.push(next)? {
            let (shown, hit) = filter.push(&piece);
            emit(&shown, &mut text)?;
            if hit {
                stop = StopReason::StopString;
                break;
            }
        }
        if guide.as_ref().is_some_and(|g| g.is_finished()) {
            stop = StopReason::Grammar;
            break;
        }
        if ids.len() == req.max_new_tokens || cache.len() >= ctx {
            break;
        }
        let logits = model.forward(&[next], cache, false)?.to_vec()?;
        next = pick(&mut sampler, &mut guide, &logits, &history);
    }
    if stop != StopReason::StopString {
        if let Some(rest) = decoder.finish()? {
            let (shown, hit) = filter.push(&rest);
            emit(&shown, &mut text)?;
            if hit {
                stop = StopReason::StopString;
            }
        }
        if stop != StopReason::StopString {
            let rest = filter.flush();
            emit(&rest, &mut text)?;
        }
    }
    stats.decode_secs = t1.elapsed().as_secs_f64();
    stats.generated_tokens = ids.len();
    Ok(GenerateOutput {
        ids,
        text,
        stop,
        stats,
    })
}

/// Samples the next token, through the guide's mask when there is one.
fn pick(sampler: &mut Sampler, guide: &mut Option<Guide>, logits: &[f32], history: &[u32]) -> u32 {
    let Some(g) = guide.as_mut() else {
        return sampler.sample(logits, history);
    };
    let mut masked = logits.to_vec();
    g.mask(&mut masked);
    let t = sampler.sample(&masked, history);
    if let Err(e) = g.accept(t) {
        tracing::warn!("{e}");
    }
    t
}
