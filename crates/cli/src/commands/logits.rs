//! `logits`: the model's output logits for given ids, as float32 .npy.

use anyhow::Result;

use crate::args::LogitsArgs;
use crate::load::load_model_only;

pub fn run(a: LogitsArgs) -> Result<()> {
    let (source, model, ctx) = load_model_only(&a.model)?;
    let vocab = source.config().vocab_size;
    if let Some(bad) = a.ids.iter().find(|&&i| i as usize >= vocab) {
        anyhow::bail!("token id {bad} is outside the vocabulary of {vocab}");
    }
    let mut cache = model.new_cache(a.ids.len().max(ctx))?;
    let logits = model.forward(&a.ids, &mut cache, true)?;
    crate::npy::write_f32(&a.out, logits.shape(), &logits.to_vec()?)?;
    println!("{}", a.out.display());
    Ok(())
}
