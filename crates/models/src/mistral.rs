//! Mistral: the Llama layout. Sliding-window attention is not applied; the
//! context is capped at the window so results stay exact.

use mm_core::{Device, Result};
use mm_formats::WeightSource;

use crate::layers::AttentionOptions;
use crate::DecoderModel;

pub fn build(
    src: &dyn WeightSource,
    device: &Device,
    progress: &dyn Fn(usize, usize),
) -> Result<DecoderModel> {
    DecoderModel::load(src, device, AttentionOptions::default(), progress)
}
