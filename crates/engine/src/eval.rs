//! Perplexity, and KL divergence against a reference model, over a text, the
//! way llama.cpp's `llama-perplexity` measures them.
//!
//! The text is tokenized once ([`eval_tokens`]: BOS first only if the
//! tokenizer adds one) and cut into non-overlapping windows of `ctx` tokens;
//! a tail shorter than a window is dropped. Each window runs from an empty KV
//! cache. As in `llama-perplexity`, only the second half of a window is
//! scored: the logits at positions `ctx/2 .. ctx-1` predict the tokens at
//! `ctx/2 + 1 .. ctx`, so every scored token has at least `ctx/2` tokens of
//! context, and a window scores `ctx - 1 - ctx/2` tokens. When the tokenizer
//! adds BOS, the first token of every window is replaced by BOS (also as
//! `llama-perplexity` does), so each window looks like the start of a
//! document.
//!
//! With a reference model the same windows run through it too, and at the
//! same positions this measures the mean `KL(ref ‖ model)` over the whole
//! vocabulary (log-softmax in f64), how often both models' most likely token
//! agree, and the reference's own perplexity.
//!
//! Memory stays bounded by one window: logits of the scored half are
//! computed, folded into running sums and dropped before the next window.

use std::ops::Range;

use mm_core::{Error, Result};
use mm_models::DecoderModel;

use crate::sampler::argmax;
use crate::tokenizer::Tokenizer;

/// Settings of a perplexity run.
#[derive(Clone, Debug)]
pub struct EvalConfig {
    /// Window length in tokens (at least 3, at most the models' context).
    pub ctx: usize,
    /// Evaluate at most this many windows (all of them when `None`).
    pub max_chunks: Option<usize>,
    /// When set, replaces the first token of every window (the tokenizer's
    /// BOS, where it adds one; see [`eval_bos`]).
    pub bos: Option<u32>,
}

/// Where a run stands, after each window.
#[derive(Clone, Debug)]
pub struct EvalProgress {
    /// Windows done.
    pub chunk: usize,
    /// Windows in the run.
    pub chunks: usize,
    /// Perplexity so far.
    pub ppl: f64,
    /// Mean KL divergence so far (with a reference model).
    pub kld: Option<f64>,
}

/// What the reference comparison found.
#[derive(Clone, Debug, PartialEq)]
pub struct RefReport {
    /// The reference model's perplexity on the scored tokens.
    pub ppl: f64,
    /// Mean `KL(ref ‖ model)` in nats per scored token.
    pub kld: f64,
    /// Fraction of scored positions where both models' argmax agree.
    pub top1: f64,
}

/// Result of a perplexity run.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalReport {
    /// `exp(mean negative log-likelihood)` over the scored tokens.
    pub ppl: f64,
    /// Mean negative log-likelihood in nats.
    pub nll: f64,
    /// Scored tokens (`chunks · (ctx - 1 - ctx/2)`).
    pub tokens: usize,
    /// Windows evaluated.
    pub chunks: usize,
    /// Window length.
    pub ctx: usize,
    /// Present when a reference model was given.
    pub reference: Option<RefReport>,
}

/// The positions of a window of `ctx` tokens whose logits are scored
/// (each predicts the token after it): `ctx/2 .. ctx-1`.
pub fn scored_positions(ctx: usize) -> Range<usize> {
    ctx / 2..ctx.saturating_sub(1).max(ctx / 2)
}

/// The token that starts every window: the tokenizer's BOS when its
/// encoding adds one, else nothing.
pub fn eval_bos(tok: &Tokenizer) -> Option<u32> {
    if tok.add_bos() {
        tok.bos_id()
    } else {
        None
    }
}

/// The tokens of `text` for evaluation: BOS first when the tokenizer adds
/// one, then the text without any other added special tokens (no EOS).
pub fn eval_tokens(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let body = tok.encode(text, false)?;
    let mut ids = Vec::with_capacity(body.len() + 1);
    ids.extend(eval_bos(tok));
    ids.extend(body);
    Ok(ids)
}

/// Windows of `ctx` tokens in `tokens` tokens, at most `max_chunks`.
/// Fails when not even one window fits, naming both counts.
pub fn window_count(tokens: usize, ctx: usize, max_chunks: Option<usize>) -> Result<usize> {
    if ctx == 0 {
        return Err(Error::Invalid(
            "the window length must be at least 1".into(),
        ));
    }
    let available = tokens / ctx;
    if available == 0 {
        return Err(Error::Other(format!(
            "the text is too short: it has {tokens} token{}, and one window needs {ctx}",
            if tokens == 1 { "" } else { "s" }
        )));
    }
    match max_chunks {
        Some(0) => Err(Error::Invalid(
            "the number of windows must be at least 1".into(),
        )),
        Some(n) => Ok(n.min(available)),
        None => Ok(available),
    }
}

/// Running sums over scored positions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scores {
    /// Scored positions.
    pub count: usize,
    /// Σ −log p_model(target).
    pub nll: f64,
    /// Σ −log p_ref(target).
    pub ref_nll: f64,
    /// Σ KL(ref ‖ model).
    pub kld: f64,
    /// Positions where both argmax agree.
    pub top1: usize,
}

/// `out[i] = log softmax(row)[i]` in f64. Fails on NaN or +∞ logits.
pub fn log_softmax(row: &[f32], out: &mut Vec<f64>) -> Result<()> {
    out.clear();
    let mut max = f64::NEG_INFINITY;
    for &x in row {
        if x.is_nan() || x == f32::INFINITY {
            return Err(Error::Other(format!(
                "the model produced a non-finite logit ({x})"
            )));
        }
        max = max.max(x as f64);
    }
    if max == f64::NEG_INFINITY {
        return Err(Error::Other(
            "the model produced a row of logits that are all -inf".into(),
        ));
    }
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    out.extend(row.iter().map(|&x| x as f64 - lse));
    Ok(())
}

/// `KL(p ‖ q) = Σ p (log p − log q)` from log-probabilities (terms with
/// p = 0 contribute nothing).
pub fn kl_divergence(log_p: &[f64], log_q: &[f64]) -> f64 {
    log_p
        .iter()
        .zip(log_q)
        .filter(|(lp, _)| **lp > f64::NEG_INFINITY)
        .map(|(lp, lq)| lp.exp() * (lp - lq))
        .sum::<f64>()
        .max(0.0)
}

impl Scores {
    /// Adds rows of `logits` (`[targets.len(), vocab]`, row-major), each
    /// scored against the token in `targets`, and the same rows of the
    /// reference's logits when given.
    pub fn add(
        &mut self,
        logits: &[f32],
        reference: Option<&[f32]>,
        targets: &[u32],
        vocab: usize,
    ) -> Result<()> {
        let rows = targets.len();
        let check = |what: &str, len: usize| {
            if vocab == 0 || len != rows * vocab {
                Err(Error::Other(format!(
                    "{what} logits have {len} values, expected {rows} rows of {vocab}"
                )))
            } else {
                Ok(())
            }
        };
        check("model", logits.len())?;
        if let Some(r) = reference {
            check("reference", r.len())?;
        }
        if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Other(format!(
                "token id {t} is outside the model's vocabulary of {vocab}"
            )));
        }
        let (mut lp, mut lr) = (Vec::with_capacity(vocab), Vec::with_capacity(vocab));
        for (i, &t) in targets.iter().enumerate() {
            let t = t as usize;
            let row = &logits[i * vocab..(i + 1) * vocab];
            log_softmax(row, &mut lp)?;
            self.nll -= lp[t];
            if let Some(r) = reference {
                let rrow = &r[i * vocab..(i + 1) * vocab];
                log_softmax(rrow, &mut lr)?;
                self.ref_nll -= lr[t];
                self.kld += kl_divergence(&lr, &lp);
                if argmax(row) == argmax(rrow) {
                    self.top1 += 1;
                }
            }
            self.count += 1;
        }
        Ok(())
    }

    fn mean(&self, sum: f64) -> f64 {
        sum / self.count.max(1) as f64
    }
}

/// Runs one window through `model` from an empty `cache` and returns the
/// logits of the scored positions, `[scored, vocab]` row-major.
fn window_logits(
    model: &DecoderModel,
    cache: &mut mm_models::KvCache,
    window: &[u32],
) -> Result<Vec<f32>> {
    let scored = scored_positions(window.len());
    cache.clear();
    // The context half: only the cache matters, not its logits.
    model.forward(&window[..scored.start], cache, false)?;
    // The scored half: positions ctx/2 .. ctx-1; the window's last token is
    // only a target, never an input.
    model.forward(&window[scored], cache, true)?.to_vec()
}

/// Perplexity of `model` over `ids` (see the module docs), and with
/// `reference` the comparison against it. `progress` is called after each
/// window.
pub fn evaluate(
    model: &DecoderModel,
    reference: Option<&DecoderModel>,
    ids: &[u32],
    cfg: &EvalConfig,
    progress: &mut dyn FnMut(&EvalProgress),
) -> Result<EvalReport> {
    let ctx = cfg.ctx;
    if ctx < 3 {
        return Err(Error::Invalid(format!(
            "the window must be at least 3 tokens (it scores positions ctx/2..ctx-1), got {ctx}"
        )));
    }
    let vocab = model.config.vocab_size;
    let models: Vec<(&str, &DecoderModel)> = std::iter::once(("model", model))
        .chain(reference.map(|r| ("reference model", r)))
        .collect();
    for (what, m) in &models {
        let max = m.config.max_position_embeddings;
        if ctx > max {
            return Err(Error::Invalid(format!(
                "a window of {ctx} tokens exceeds the {what}'s context length {max}"
            )));
        }
    }
    if let Some(r) = reference {
        if r.config.vocab_size != vocab {
            return Err(Error::Invalid(format!(
                "the model and the reference have different vocabularies ({vocab} vs {} logits); \
                 they must share one tokenizer",
                r.config.vocab_size
            )));
        }
    }
    if let Some(bad) = ids
        .iter()
        .chain(cfg.bos.as_ref())
        .find(|&&t| t as usize >= vocab)
    {
        return Err(Error::Invalid(format!(
            "token id {bad} is outside the model's vocabulary of {vocab}"
        )));
    }
    let chunks = window_count(ids.len(), ctx, cfg.max_chunks)?;

    let mut cache = model.new_cache(ctx)?;
    let mut ref_cache = reference.map(|r| r.new_cache(ctx)).transpose()?;
    let scored = scored_positions(ctx);
    let mut scores = Scores::default();
    let mut window = Vec::with_capacity(ctx);
    for c in 0..chunks {
        window.clear();
        window.extend_from_slice(&ids[c * ctx..(c + 1) * ctx]);
        if let Some(b) = cfg.bos {
            window[0] = b;
        }
        let targets = &window[scored.start + 1..];
        let logits = window_logits(model, &mut cache, &window)?;
        let ref_logits = match (reference, ref_cache.as_mut()) {
            (Some(r), Some(rc)) => Some(window_logits(r, rc, &window)?),
            _ => None,
        };
        scores
            .add(&logits, ref_logits.as_deref(), targets, vocab)
            .map_err(|e| Error::Other(format!("window {}: {e}", c + 1)))?;
        progress(&EvalProgress {
            chunk: c + 1,
            chunks,
            ppl: scores.mean(scores.nll).exp(),
            kld: reference.map(|_| scores.mean(scores.kld)),
        });
    }
    Ok(EvalReport {
        ppl: scores.mean(scores.nll).exp(),
        nll: scores.mean(scores.nll),
        tokens: scores.count,
        chunks,
        ctx,
        reference: reference.map(|_| RefReport {
            ppl: scores.mean(scores.ref_nll).exp(),
            kld: scores.mean(scores.kld),
            top1: scores.top1 as f64 / scores.count.max(1) as f64,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scored_positions_are_the_second_half() {
        assert_eq!(scored_positions(512), 256..511);
        assert_eq!(scored_positions(3), 1..2);
        assert_eq!(scored_positions(7), 3..6);
        assert_eq!(scored_positions(2), 1..1);
        assert_eq!(scored_positions(0), 0..0);
    }

    #[test]
    fn log_softmax_and_kl_by_hand() {
        let mut lp = Vec::new();
        log_softmax(&[0.0, 0.0], &mut lp).unwrap();
        assert!((lp[0] - 0.5f64.ln()).abs() < 1e-15);
        let mut lq = Vec::new();
        log_softmax(&[0.0, 3f32.ln()], &mut lq).unwrap();
        assert!((lq[1] - 0.75f64.ln()).abs() < 1e-7);
        // KL([.5,.5] ‖ [.25,.75]) = .5 ln 2 + .5 ln(2/3)
        let want = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
        assert!((kl_divergence(&lp, &lq) - want).abs() < 1e-7);
        assert_eq!(kl_divergence(&lp, &lp), 0.0);
        // a token the reference rules out contributes nothing
        log_softmax(&[f32::NEG_INFINITY, 1.0], &mut lp).unwrap();
        assert!((kl_divergence(&lp, &lq) + 0.75f64.ln()).abs() < 1e-7);
        assert!(log_softmax(&[1.0, f32::NAN], &mut lp).is_err());
        assert!(log_softmax(&[f32::INFINITY], &mut lp).is_err());
        assert!(log_softmax(&[f32::NEG_INFINITY; 2], &mut lp).is_err());
    }

    #[test]
    fn scores_accumulate_nll_kl_and_agreement() {
        let logits = [0.0f32, 0.0, 2.0, 0.0];
        let reference = [0.0f32, 3f32.ln(), 2.0, 0.0];
        let mut s = Scores::default();
        s.add(&logits, Some(&reference), &[1, 0], 2).unwrap();
        assert_eq!(s.count, 2);
        let lse = (2f64.exp() + 1.0).ln();
        assert!((s.nll - (2f64.ln() + (lse - 2.0))).abs() < 1e-12);
        assert!((s.ref_nll - (-(0.75f64.ln()) + (lse - 2.0))).abs() < 1e-6);
        assert_eq!(s.top1, 1, "row 0 ties (argmax 0) vs 1; row 1 agrees");
        // wrong sizes and out-of-vocabulary targets are errors, not panics
        assert!(s.add(&logits, None, &[0], 2).is_err());
        assert!(s.add(&logits, Some(&reference[..3]), &[0, 0], 2).is_err());
        assert!(s.add(&logits, None, &[0, 2], 2).is_err());
        assert!(s.add(&[], None, &[], 0).is_err());
        assert_eq!(s.count, 2, "failed adds change nothing");
    }

    fn tiny(name: &str) -> DecoderModel {
        use std::sync::Arc;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny")
            .join(name);
        let src = mm_formats::open_source(&dir).unwrap();
        let cpu: Arc<dyn mm_core::Backend> = Arc::new(mm_backend_cpu::CpuBackend::new());
        let dev = mm_core::Device::new(cpu.clone(), cpu);
        mm_models::load_model(src.as_ref(), &dev, &|_, _| {}).unwrap()
    }

    /// Deterministic pseudo-text of ids in 3..300.
    fn ids(n: usize) -> Vec<u32> {
        (0..n as u32)
            .map(|i| 3 + (i * 7919 + i * i * 31) % 297)
            .collect()
    }

    fn run(
        m: &DecoderModel,
        r: Option<&DecoderModel>,
        ids: &[u32],
        ctx: usize,
        max_chunks: Option<usize>,
        bos: Option<u32>,
    ) -> Result<EvalReport> {
        let cfg = EvalConfig {
            ctx,
            max_chunks,
            bos,
        };
        evaluate(m, r, ids, &cfg, &mut |_| {})
    }

    #[test]
    fn perplexity_matches_one_full_forward_per_window() {
        let m = tiny("llama");
        let ids = ids(70);
        let ctx = 32;
        let rep = run(&m, None, &ids, ctx, None, None).unwrap();
        assert_eq!((rep.chunks, rep.ctx, rep.tokens), (2, 32, 2 * 15));
        assert!(rep.reference.is_none());
        let vocab = m.config.vocab_size;
        let mut nll = 0.0;
        let mut lp = Vec::new();
        for w in ids[..2 * ctx].chunks(ctx) {
            let mut cache = m.new_cache(ctx).unwrap();
            let logits = m.forward(w, &mut cache, true).unwrap().to_vec().unwrap();
            for p in 16..31 {
                log_softmax(&logits[p * vocab..(p + 1) * vocab], &mut lp).unwrap();
                nll -= lp[w[p + 1] as usize];
            }
        }
        let want = (nll / 30.0).exp();
        assert!(
            (rep.ppl - want).abs() <= 1e-4 * want,
            "ppl {} vs {want}",
            rep.ppl
        );
        assert!((rep.nll.exp() - rep.ppl).abs() < 1e-9 * rep.ppl);
    }

    #[test]
    fn a_model_against_itself_agrees_exactly() {
        let m = tiny("qwen2");
        let r = tiny("qwen2");
        let rep = run(&m, Some(&r), &ids(100), 24, None, None).unwrap();
        let refr = rep.reference.clone().unwrap();
        assert!(refr.kld.abs() <= 1e-9, "kld {}", refr.kld);
        assert_eq!(refr.top1, 1.0);
        assert!((refr.ppl - rep.ppl).abs() <= 1e-9 * rep.ppl);
        assert_eq!((rep.chunks, rep.tokens), (4, 4 * 11));
        // a different model disagrees
        let other = tiny("mistral");
        let rep = run(&m, Some(&other), &ids(100), 24, None, None).unwrap();
        assert!(rep.reference.unwrap().kld > 1e-3);
    }

    #[test]
    fn bos_replaces_each_window_start_and_chunks_are_capped() {
        let m = tiny("llama");
        let ids = ids(64);
        let with_bos = run(&m, None, &ids, 16, None, Some(1)).unwrap();
        let mut replaced = ids.clone();
        for w in replaced.chunks_mut(16) {
            w[0] = 1;
        }
        let by_hand = run(&m, None, &replaced, 16, None, None).unwrap();
        assert_eq!(with_bos, by_hand);
        let plain = run(&m, None, &ids, 16, None, None).unwrap();
        assert_ne!(plain.ppl, with_bos.ppl);
        let capped = run(&m, None, &ids, 16, Some(2), None).unwrap();
        assert_eq!((capped.chunks, capped.tokens), (2, 2 * 7));
        let first_two = run(&m, None, &ids[..32], 16, None, None).unwrap();
        assert_eq!(capped, first_two);
    }

    #[test]
    fn bad_settings_are_clear_errors() {
        let m = tiny("llama");
        let e = run(&m, None, &ids(20), 32, None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("20 tokens") && e.contains("32"), "{e}");
        let e = run(&m, None, &ids(20), 2, None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 3"), "{e}");
        let e = run(&m, None, &ids(2000), 1024, None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("context length 512"), "{e}");
        let e = run(&m, None, &[5, 6, 999, 7], 3, None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("999"), "{e}");
        assert!(run(&m, None, &ids(20), 4, Some(0), None).is_err());
    }
}
