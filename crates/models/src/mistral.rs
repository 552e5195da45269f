//! Mistral: the Llama layout, with sliding-window attention when the
//! config sets `sliding_window` (v0.1; later versions have none).

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
