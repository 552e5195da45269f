//! `logits`: the model's output logits for given ids, as float32 .npy.

use anyhow::Result;

use crate::args::LogitsArgs;
use crate::load::load_with;

pub fn run(a: LogitsArgs) -> Result<()> {
    let m = load_with(&a.model, false)?;
    let vocab = m.source.config().vocab_size;
    if let Some(bad) = a.ids.iter().find(|&&i| i as usize >= vocab) {
        anyhow::bail!("token id {bad} is outside the vocabulary of {vocab}");
    }
    let mut cache = m.model.new_cache(a.ids.len().max(m.ctx))?;
    let logits = m.model.forward(&a.ids, &mut cache, true)?;
    crate::npy::write_f32(&a.out, logits.shape(), &logits.to_vec()?)?;
    println!("{}", a.out.display());
    Ok(())
}
