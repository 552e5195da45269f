//! Layer-by-layer calibration (GPTQ's reference schedule): the residual
//! stream of every calibration window is kept at the input of the next
//! layer to quantize, so that layer's Hessians are collected from what the
//! already-quantized layers before it produce, and each layer runs alone
//! (one layer forward per stage, not a whole model pass).
//!
//! Memory: `windows × window × hidden` f32 for the residual streams
//! (16 × 512 × 576 × 4 B = 19 MB for SmolLM2) and one KV cache.
//!
//! Use: for each layer `l` in order, for each stage `s` of [`stage_of`],
//! call [`SequentialCalib::hessians`] for the stage's weights, quantize
//! them and put the quantized weights into the model
//! ([`DecoderModel::linear_mut`]); then [`SequentialCalib::advance`].

use std::collections::HashMap;
use std::sync::Arc;

use mm_core::{Error, Result, Tensor};
use mm_models::{DecoderModel, KvCache};
use mm_quant::gptq::Hessian;

use super::{calibration_windows, hessian_observer, take_hessians, CalibOptions, NameFilter};

/// The stage of a decoder-layer weight in true-sequential order: the
/// attention inputs (q, k, v) first, then o, then the MLP inputs (gate,
/// up), then down. `None` for names outside decoder layers. Weights of one
/// stage share an input, so they are calibrated together.
pub fn stage_of(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer = layer.parse().ok()?;
    let stage = match tail.strip_suffix(".weight").unwrap_or(tail) {
        "self_attn.q_proj" | "self_attn.k_proj" | "self_attn.v_proj" => 0,
        "self_attn.o_proj" => 1,
        "mlp.gate_proj" | "mlp.up_proj" => 2,
        "mlp.down_proj" => 3,
        _ => return None,
    };
    Some((layer, stage))
}

/// Residual streams of the calibration windows at the input of layer
/// [`next_layer`](Self::next_layer).
pub struct SequentialCalib {
    /// One `[window, hidden]` stream per window.
    streams: Vec<Tensor>,
    positions: Vec<u32>,
    cache: KvCache,
    layer: usize,
}

impl SequentialCalib {
    /// Cuts `tokens` into windows (see [`calibration_windows`]) and embeds
    /// them: the streams entering layer 0.
    pub fn new(model: &DecoderModel, tokens: &[u32], opts: &CalibOptions) -> Result<Self> {
        let ctx = model.config.max_position_embeddings;
        if opts.window > ctx {
            return Err(Error::Invalid(format!(
                "calibration window of {} tokens exceeds the model's context length {ctx}",
                opts.window
            )));
        }
        let windows = calibration_windows(tokens, opts.window, opts.max_windows, opts.min_tokens)?;
        let streams = windows
            .iter()
            .map(|w| model.embed(w))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            streams,
            positions: (0..opts.window as u32).collect(),
            cache: model.new_cache(opts.window)?,
            layer: 0,
        })
    }

    /// The layer whose inputs the streams are.
    pub fn next_layer(&self) -> usize {
        self.layer
    }

    /// Calibration windows.
    pub fn windows(&self) -> usize {
        self.streams.len()
    }

    /// Runs layer [`next_layer`](Self::next_layer) of `model` on every
    /// window and returns the Hessians of the inputs of the weights `filter`
    /// selects (weights of that layer; the model as it is now, so weights
    /// of earlier stages already replaced count). The streams do not move.
    pub fn hessians(
        &mut self,
        model: &mut DecoderModel,
        filter: NameFilter,
    ) -> Result<HashMap<String, Hessian>> {
        let (observer, state) = hessian_observer(filter);
        model.set_linear_observer(Some(observer));
        let run = self.run_layer(model, false);
        model.set_linear_observer(None);
        run?;
        take_hessians(&state)
    }

    /// Moves the streams through layer [`next_layer`](Self::next_layer) of
    /// `model` (as it is now, i.e. quantized): they become the inputs of the
    /// layer after it.
    pub fn advance(&mut self, model: &DecoderModel) -> Result<()> {
        self.run_layer(model, true)?;
        self.layer += 1;
        Ok(())
    }

    fn run_layer(&mut self, model: &DecoderModel, keep: bool) -> Result<()> {
        let l = self.layer;
        if l >= model.num_layers() {
            return Err(Error::Invalid(format!(
                "sequential calibration is past the last layer ({} layers)",
                model.num_layers()
            )));
        }
        for h in &mut self.streams {
            self.cache.clear();
            let out = model.forward_layer(l, h, &self.positions, &mut self.cache)?;
            if keep {
                *h = out;
            }
        }
        Ok(())
    }
}

/// A filter that selects exactly `names`.
pub fn names_filter(names: Vec<String>) -> NameFilter {
    Arc::new(move |n: &str| names.iter().any(|m| m == n))
}

#[cfg(test)]
mod tests {
    use super::stage_of;

    #[test]
    fn stages_follow_the_forward_order() {
        assert_eq!(
            stage_of("model.layers.0.self_attn.q_proj.weight"),
            Some((0, 0))
        );
        assert_eq!(
            stage_of("model.layers.12.self_attn.v_proj.weight"),
            Some((12, 0))
        );
        assert_eq!(
            stage_of("model.layers.3.self_attn.o_proj.weight"),
            Some((3, 1))
        );
        assert_eq!(stage_of("model.layers.3.mlp.up_proj.weight"), Some((3, 2)));
        assert_eq!(
            stage_of("model.layers.29.mlp.down_proj.weight"),
            Some((29, 3))
        );
        assert_eq!(stage_of("lm_head.weight"), None);
        assert_eq!(stage_of("model.layers.x.mlp.down_proj.weight"), None);
        assert_eq!(stage_of("model.layers.1.input_layernorm.weight"), None);
    }
}
