//! One request at a time through the batched core: `generate` and `chat`
//! run the same [`BatchEngine`] step loop as the server (one scheduler,
//! one paged KV cache, the same sampling), streaming text that never splits
//! a UTF-8 character or shows a stop string.
//!
//! [`engine_for`] makes the engine a CLI session keeps: its prefix cache
//! outlives each request, so a chat's next turn (the whole conversation
//! re-rendered) prefills only what is new.

use std::time::Instant;

use mm_core::{Error, Result};
use mm_models::DecoderModel;

use crate::batch::{BatchEngine, BatchRequest};
use crate::constrain::Guide;
use crate::sampler::SamplingParams;
use crate::sched::{FinishReason, SchedulerConfig};
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
    /// Prompt tokens served from the prefix cache (not recomputed).
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    /// Until the first token (the prefill of the uncached prompt).
    pub prefill_secs: f64,
    pub decode_secs: f64,
}

impl GenerateStats {
    /// Prefill rate over the tokens actually computed.
    pub fn prefill_tok_s(&self) -> f64 {
        (self.prompt_tokens - self.cached_tokens.min(self.prompt_tokens)) as f64
            / self.prefill_secs.max(1e-9)
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

/// An engine for one sequence of up to `ctx` tokens (prompt and output),
/// KV in the backend's default type (f16; f32 on the exact backend).
pub fn engine_for(model: &DecoderModel, ctx: usize) -> Result<BatchEngine<'_>> {
    let ctx = ctx.clamp(2, model.config.max_position_embeddings.max(2));
    let cfg = SchedulerConfig {
        max_num_seqs: 1,
        block_size: 16,
        num_blocks: ctx.div_ceil(16),
        max_model_len: ctx,
        ..Default::default()
    };
    BatchEngine::new(model, cfg, model.default_kv_dtype())
}

/// Generates from `req` on `engine` (which should have nothing else to
/// do), calling `on_text` with each new piece of text.
pub fn generate(
    engine: &mut BatchEngine,
    tok: &Tokenizer,
    req: &GenerateRequest,
    on_text: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<GenerateOutput> {
    let ctx = engine.scheduler().config().max_model_len;
    let n_prompt = req.prompt_ids.len();
    if n_prompt == 0 {
        return Err(Error::Invalid("the prompt is empty (no tokens)".into()));
    }
    if n_prompt >= ctx {
        return Err(Error::ContextOverflow {
            prompt: n_prompt,
            requested: req.max_new_tokens,
            context: ctx,
        });
    }
    if req.max_new_tokens == 0 {
        return Ok(GenerateOutput {
            ids: Vec::new(),
            text: String::new(),
            stop: StopReason::Length,
            stats: GenerateStats {
                prompt_tokens: n_prompt,
                ..Default::default()
            },
        });
    }
    // A guided output ends on EOS even without `stop_on_eos`.
    let eos: Vec<u32> = match &req.guide {
        _ if req.stop_on_eos => tok.eos_ids().to_vec(),
        Some(g) => g.eos_ids().to_vec(),
        None => Vec::new(),
    };
    let id = engine.add(BatchRequest {
        prompt: req.prompt_ids.clone(),
        max_new_tokens: req.max_new_tokens,
        sampling: req.sampling.clone(),
        eos: eos.clone(),
        logprobs: None,
        guide: req.guide.clone(),
    })?;
    let mut run = Run {
        decoder: tok.stream_decoder(false),
        filter: StopFilter::new(req.stop_strings.clone()),
        ids: Vec::new(),
        text: String::new(),
        on_text,
    };
    let res = run.steps(engine, id, &eos);
    if res.is_err() && engine.scheduler().get(id).is_some() {
        let _ = engine.cancel(id);
    }
    let (stop, t0, first, cached) = res?;
    let t_end = Instant::now();
    Ok(GenerateOutput {
        stats: GenerateStats {
            prompt_tokens: n_prompt,
            cached_tokens: cached,
            generated_tokens: run.ids.len(),
            prefill_secs: (first.unwrap_or(t_end) - t0).as_secs_f64(),
            decode_secs: first.map_or(0.0, |f| (t_end - f).as_secs_f64()),
        },
        ids: run.ids,
        text: run.text,
        stop,
    })
}

/// The text side of one generation.
struct Run<'a> {
    decoder: crate::tokenizer::StreamDecoder,
    filter: StopFilter,
    ids: Vec<u32>,
    text: String,
    on_text: &'a mut dyn FnMut(&str) -> Result<()>,
}

impl Run<'_> {
    fn emit(&mut self, piece: &str) -> Result<bool> {
        let (shown, hit) = self.filter.push(piece);
        if !shown.is_empty() {
            self.text.push_str(&shown);
            (self.on_text)(&shown)?;
        }
        Ok(hit)
    }

    /// Steps until the sequence ends: (why, start, first token, cached).
    fn steps(
        &mut self,
        engine: &mut BatchEngine,
        id: u64,
        eos: &[u32],
    ) -> Result<(StopReason, Instant, Option<Instant>, usize)> {
        let t0 = Instant::now();
        let mut first = None;
        loop {
            let events = engine.step()?;
            if events.is_empty() && !engine.has_unfinished() {
                return Err(Error::Other("the sequence ended without a token".into()));
            }
            for ev in events.into_iter().filter(|e| e.id == id) {
                first.get_or_insert_with(Instant::now);
                let cached = ev.cached_tokens;
                let is_eos = eos.contains(&ev.token);
                if !is_eos {
                    self.ids.push(ev.token);
                    if let Some(piece) = self.decoder.push(ev.token)? {
                        if self.emit(&piece)? {
                            if ev.finished.is_none() {
                                engine.finish(id, FinishReason::Stop)?;
                            }
                            return Ok((StopReason::StopString, t0, first, cached));
                        }
                    }
                }
                let Some(reason) = ev.finished else { continue };
                if let Some(rest) = self.decoder.finish()? {
                    if self.emit(&rest)? {
                        return Ok((StopReason::StopString, t0, first, cached));
                    }
                }
                let rest = self.filter.flush();
                if !rest.is_empty() {
                    self.text.push_str(&rest);
                    (self.on_text)(&rest)?;
                }
                let stop = match reason {
                    FinishReason::Length => StopReason::Length,
                    _ if is_eos => StopReason::Eos,
                    _ => StopReason::Grammar,
                };
                return Ok((stop, t0, first, cached));
            }
        }
    }
}
