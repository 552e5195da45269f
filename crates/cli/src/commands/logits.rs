//! `logits`: the model's output logits for given ids, as float32 .npy.
//! Needs no tokenizer: the ids are given. `--decode N` runs the last N
//! ids as decode steps (the path generation takes) instead of in the
//! prompt.

use anyhow::Result;

use crate::args::LogitsArgs;
use crate::load::{build, open};

pub fn run(a: LogitsArgs) -> Result<()> {
    let (path, source) = open(&a.model)?;
    let vocab = source.config().vocab_size;
    if let Some(bad) = a.ids.iter().find(|&&i| i as usize >= vocab) {
        anyhow::bail!("token id {bad} is outside the vocabulary of {vocab}");
    }
    let (model, ctx) = build(&path, source.as_ref(), &a.model)?;
    if a.decode >= a.ids.len() {
        anyhow::bail!(
            "--decode {} leaves no prompt: at most {} of the {} ids can be decoded",
            a.decode,
            a.ids.len() - 1,
            a.ids.len()
        );
    }
    let mut cache = model.new_cache(a.ids.len().max(ctx))?;
    let split = a.ids.len() - a.decode;
    let logits = model.forward(&a.ids[..split], &mut cache, true)?;
    let vocab = logits.shape()[1];
    let mut all = logits.to_vec()?;
    for &id in &a.ids[split..] {
        all.extend(model.forward(&[id], &mut cache, false)?.to_vec()?);
    }
    crate::npy::write_f32(&a.out, &[a.ids.len(), vocab], &all)?;
    println!("{}", a.out.display());
    Ok(())
}
