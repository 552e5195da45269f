//! `eval`: perplexity over a text file, and with `--ref` the KL divergence
//! and top-1 agreement against a reference model (see `mm_engine::eval`).

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mm_engine::eval::{eval_bos, eval_tokens, evaluate, window_count, EvalConfig};
use serde_json::json;

use crate::args::{EvalArgs, ModelArgs};
use crate::load::{build, open, tokenizer};

pub fn run(a: EvalArgs) -> Result<()> {
    if a.ctx < 3 {
        bail!(
            "--ctx must be at least 3 for eval (it scores positions ctx/2..ctx-1), got {}",
            a.ctx
        );
    }
    if a.max_chunks == Some(0) {
        bail!("--max-chunks must be at least 1");
    }
    let bytes = std::fs::read(&a.text).with_context(|| format!("reading {}", a.text.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow!("{} is not UTF-8 text: {e}", a.text.display()))?;

    let margs = ModelArgs {
        model: a.model.clone(),
        device: a.device,
        precision: a.precision,
        ctx: Some(a.ctx),
    };
    let (path, source) = open(&margs)?;
    let max = source.config().max_position_embeddings;
    if a.ctx > max {
        bail!("--ctx {} exceeds the model's context length {max}", a.ctx);
    }
    let tok = tokenizer(&path, source.as_ref())?;
    let ids =
        eval_tokens(&tok, &text).with_context(|| format!("tokenizing {}", a.text.display()))?;
    let chunks = window_count(ids.len(), a.ctx, a.max_chunks)
        .map_err(|e| anyhow!("{e} (use a longer text or a smaller --ctx)"))?;

    // The reference must see exactly the same tokens.
    let reference = match &a.reference {
        None => None,
        Some(r) => {
            let rargs = ModelArgs {
                model: Some(r.clone()),
                ..margs.clone()
            };
            let (rpath, rsource) = open(&rargs).context("opening the reference model")?;
            let (v, rv) = (source.config().vocab_size, rsource.config().vocab_size);
            if v != rv {
                bail!(
                    "the model has a vocabulary of {v} tokens and the reference {} has {rv}; \
                     --ref needs a model with the same tokenizer",
                    rpath.display()
                );
            }
            let rtok = tokenizer(&rpath, rsource.as_ref())?;
            if tok.vocab_size() != rtok.vocab_size() {
                bail!(
                    "the model's tokenizer has {} tokens and the reference's ({}) has {}; \
                     --ref needs a model with the same tokenizer",
                    tok.vocab_size(),
                    rpath.display(),
                    rtok.vocab_size()
                );
            }
            let rids = eval_tokens(&rtok, &text)
                .with_context(|| format!("tokenizing {} for the reference", a.text.display()))?;
            if rids != ids {
                let at = ids
                    .iter()
                    .zip(&rids)
                    .position(|(x, y)| x != y)
                    .unwrap_or(ids.len().min(rids.len()));
                bail!(
                    "the model's and the reference's tokenizers split the text differently \
                     ({} vs {} tokens, first difference at token {at}); --ref needs a model \
                     with the same tokenizer",
                    ids.len(),
                    rids.len()
                );
            }
            Some((rpath, rsource, rargs))
        }
    };

    let (model, _) = build(&path, source.as_ref(), &margs)?;
    let ref_model = match &reference {
        Some((rpath, rsource, rargs)) => Some(build(rpath, rsource.as_ref(), rargs)?.0),
        None => None,
    };

    let cfg = EvalConfig {
        ctx: a.ctx,
        max_chunks: a.max_chunks,
        bos: eval_bos(&tok),
    };
    let bar = ProgressBar::new(chunks as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} windows, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("eval");
    let rep = evaluate(&model, ref_model.as_ref(), &ids, &cfg, &mut |p| {
        bar.set_position(p.chunk as u64);
        match p.kld {
            Some(k) => bar.set_message(format!("ppl {:.4} kld {:.6}", p.ppl, k)),
            None => bar.set_message(format!("ppl {:.4}", p.ppl)),
        }
    });
    bar.finish_and_clear();
    let rep = rep?;
    let r = rep.reference.as_ref();

    if a.json {
        let out = json!({
            "ppl": rep.ppl,
            "kld": r.map(|r| r.kld),
            "top1": r.map(|r| r.top1),
            "tokens": rep.tokens,
            "ref_ppl": r.map(|r| r.ppl),
            "chunks": rep.chunks,
            "ctx": rep.ctx,
        });
        println!("{out}");
        return Ok(());
    }
    let first = rep.ctx / 2;
    println!("model:    {}", path.display());
    if let Some((rpath, _, _)) = &reference {
        println!("ref:      {}", rpath.display());
    }
    println!("text:     {} ({} tokens)", a.text.display(), ids.len());
    println!(
        "windows:  {} x {} tokens, scored positions {first}..{} ({} tokens each)",
        rep.chunks,
        rep.ctx,
        rep.ctx - 1,
        rep.ctx - 1 - first
    );
    println!("scored:   {} tokens", rep.tokens);
    println!("PPL:      {:.4}", rep.ppl);
    if let Some(r) = r {
        println!("ref PPL:  {:.4}", r.ppl);
        println!("KLD:      {:.6} (mean KL(ref || model), nats/token)", r.kld);
        println!("top-1:    {:.3} % (same argmax)", 100.0 * r.top1);
    }
    Ok(())
}
