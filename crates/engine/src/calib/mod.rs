//! Calibration for GPTQ: run a model on windows of calibration text and
//! collect, for each linear weight, the Hessian `2·XᵀX/n` of its inputs.
//!
//! Two schedules:
//! * [`collect_hessians`]: one pass of the model as it is, every Hessian
//!   from the unquantized model (AutoGPTQ's `true_sequential=False` without
//!   requantized inputs). Simple, and enough at 4 bits and above.
//! * [`SequentialCalib`]: layer by layer, as GPTQ's reference does: the
//!   inputs of layer `l` come out of layers `0..l` *after* they were
//!   quantized, and inside a layer stage by stage (q/k/v, o, gate/up, down;
//!   `true_sequential`), so every weight is fitted to the inputs it will
//!   see. `metal-marlin quantize --method gptq` uses it.
//!
//! Capture goes through the model's linear observer
//! ([`DecoderModel::set_linear_observer`]); the model's outputs are
//! unchanged and the observer is removed afterwards.
//!
//! ```no_run
//! # fn main() -> mm_core::Result<()> {
//! # let (mut model, tokenizer): (mm_models::DecoderModel, mm_engine::tokenizer::Tokenizer) = todo!();
//! use mm_engine::calib::{calibration_tokens, collect_hessians, CalibOptions};
//! use mm_quant::gptq::{gptq_quantize, GptqOptions};
//! let text = std::fs::read_to_string("calib.txt").unwrap();
//! let tokens = calibration_tokens(&tokenizer, &text)?;
//! let hessians = collect_hessians(&mut model, &tokens, &CalibOptions::default(), &|_, _| {})?;
//! // hessians["model.layers.0.self_attn.q_proj.weight"] feeds gptq_quantize.
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mm_core::{Error, KvDType, Result, Tensor};
use mm_models::{DecoderModel, LinearObserver};
use mm_quant::gptq::{Gram, Hessian};

use crate::tokenizer::Tokenizer;

mod expert_bits;
mod experts;
mod sequential;
mod stages;
pub use expert_bits::{allocate_experts, measure_experts, ExpertCost, QuantizeFn};
pub use experts::{complete_expert_stats, Blended, ExpertPolicy, DEFAULT_EXPERT_MIN_TOKENS};
pub use sequential::{names_filter, SequentialCalib, WeightStats};
pub use stages::{routed_expert, stage_of, STAGES};

/// Tokens per calibration window.
pub const DEFAULT_WINDOW: usize = 512;
/// Windows used at most.
pub const DEFAULT_MAX_WINDOWS: usize = 16;
/// Fewest calibration tokens accepted.
pub const DEFAULT_MIN_TOKENS: usize = 2048;

/// Selects linear weights by name.
pub type NameFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// How calibration windows are cut and which layers are captured.
#[derive(Clone)]
pub struct CalibOptions {
    /// Tokens per window (each window is one forward pass from an empty
    /// cache); at most the model's context length.
    pub window: usize,
    /// Windows used at most; fewer when the text is shorter.
    pub max_windows: usize,
    /// Fewest tokens the calibration text must have.
    pub min_tokens: usize,
    /// Weights to collect Hessians for. `None`: every linear weight of the
    /// decoder layers (`model.layers.*`), i.e. not the LM head, which is
    /// usually kept unquantized. Hessians are `in × in` f64 matrices, so for
    /// large models collect a few layers per pass.
    pub filter: Option<NameFilter>,
}

impl Default for CalibOptions {
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW,
            max_windows: DEFAULT_MAX_WINDOWS,
            min_tokens: DEFAULT_MIN_TOKENS,
            filter: None,
        }
    }
}

impl std::fmt::Debug for CalibOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CalibOptions")
            .field("window", &self.window)
            .field("max_windows", &self.max_windows)
            .field("min_tokens", &self.min_tokens)
            .field("filter", &self.filter.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// The default filter: linear weights inside decoder layers.
pub fn is_decoder_layer_weight(name: &str) -> bool {
    name.starts_with("model.layers.")
}

/// Token ids of a calibration text, without special tokens (windows are
/// cut from anywhere in it, as the GPTQ reference does with its datasets).
pub fn calibration_tokens(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    tokenizer.encode(text, false)
}

/// Up to `max_windows` non-overlapping windows of `window` tokens, spread
/// evenly over `tokens` (consecutive when the text is just long enough).
/// Errors when there are fewer than `max(min_tokens, window)` tokens.
pub fn calibration_windows(
    tokens: &[u32],
    window: usize,
    max_windows: usize,
    min_tokens: usize,
) -> Result<Vec<&[u32]>> {
    if window == 0 || max_windows == 0 {
        return Err(Error::Invalid(format!(
            "calibration needs a window of at least 1 token and at least 1 window \
             (window {window}, max windows {max_windows})"
        )));
    }
    let need = min_tokens.max(window);
    let len = tokens.len();
    if len < need {
        return Err(Error::Invalid(format!(
            "calibration text too short: {len} tokens, need ≥ {need}"
        )));
    }
    let count = max_windows.min(len / window);
    // Starts k·(len - window)/(count - 1): the first window at the start,
    // the last at the end, gaps of at least `window` since count ≤ len/window.
    Ok((0..count)
        .map(|k| {
            let start = if count == 1 {
                0
            } else {
                k * (len - window) / (count - 1)
            };
            &tokens[start..start + window]
        })
        .collect())
}

/// What the observer accumulates.
struct State {
    hessians: HashMap<String, Hessian>,
    /// The last input seen and its Gram matrix: q/k/v (and gate/up) see the
    /// same input, whose product is then computed once.
    last: Option<(Vec<f32>, Arc<Gram>)>,
}

/// Runs `model` on calibration windows of `tokens` (see
/// [`calibration_windows`]) and returns the Hessian of the inputs of every
/// linear weight `opts.filter` selects, keyed by weight name
/// (`model.layers.3.mlp.down_proj.weight`). `progress(done, total)` is
/// called per window. Any observer the model had is removed.
pub fn collect_hessians(
    model: &mut DecoderModel,
    tokens: &[u32],
    opts: &CalibOptions,
    progress: &dyn Fn(usize, usize),
) -> Result<HashMap<String, Hessian>> {
    let windows = calibration_windows(tokens, opts.window, opts.max_windows, opts.min_tokens)?;
    let ctx = model.config.max_position_embeddings;
    if opts.window > ctx {
        return Err(Error::Invalid(format!(
            "calibration window of {} tokens exceeds the model's context length {ctx}",
            opts.window
        )));
    }
    let filter: NameFilter = opts
        .filter
        .clone()
        .unwrap_or_else(|| Arc::new(is_decoder_layer_weight));
    let (observer, state) = hessian_observer(filter);
    model.set_linear_observer(Some(observer));
    let run = (|| {
        for (k, w) in windows.iter().enumerate() {
            progress(k, windows.len());
            // f32 KV: the Hessians of the model's own arithmetic.
            let mut cache = model.new_cache_with(w.len(), KvDType::F32)?;
            model.forward(w, &mut cache, false)?;
        }
        progress(windows.len(), windows.len());
        Ok(())
    })();
    model.set_linear_observer(None);
    run?;
    take_hessians(&state)
}

/// An observer that accumulates the Hessians of the inputs of the linear
/// weights `filter` selects, and the state it fills.
fn hessian_observer(filter: NameFilter) -> (LinearObserver, Arc<Mutex<State>>) {
    let state = Arc::new(Mutex::new(State {
        hessians: HashMap::new(),
        last: None,
    }));
    let st = state.clone();
    let observer: LinearObserver = Arc::new(move |name: &str, x: &Tensor| {
        if !filter(name) {
            return Ok(());
        }
        let (rows, cols) = x.dims2()?;
        let data = x.to_vec()?;
        let mut st = st
            .lock()
            .map_err(|_| Error::Other("calibration state poisoned by a panic".into()))?;
        let gram = match &st.last {
            Some((prev, g)) if g.cols() == cols && *prev == data => g.clone(),
            _ => {
                let g =
                    Arc::new(Gram::new(&data, rows, cols).map_err(|e| {
                        Error::Invalid(format!("calibration input of {name}: {e}"))
                    })?);
                st.last = Some((data, g.clone()));
                g
            }
        };
        st.hessians
            .entry(name.to_string())
            .or_insert_with(|| Hessian::new(cols))
            .add_gram(&gram)
            .map_err(|e| Error::Invalid(format!("{name}: {e}")))
    });
    (observer, state)
}

/// The Hessians an observer collected; an error when it captured none.
fn take_hessians(state: &Mutex<State>) -> Result<HashMap<String, Hessian>> {
    let hessians = std::mem::take(
        &mut state
            .lock()
            .map_err(|_| Error::Other("calibration state poisoned by a panic".into()))?
            .hessians,
    );
    if hessians.is_empty() {
        return Err(Error::Invalid(
            "calibration captured no linear layer (the filter matched none)".into(),
        ));
    }
    Ok(hessians)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_spread_and_errors() {
        let t: Vec<u32> = (0..5000).collect();
        let w = calibration_windows(&t, 512, 16, 2048).unwrap();
        // 5000 / 512 = 9 windows fit.
        assert_eq!(w.len(), 9);
        assert_eq!(w[0][0], 0);
        assert_eq!(*w[8].last().unwrap(), 4999);
        for p in w.windows(2) {
            assert!(p[1][0] >= p[0][0] + 512, "windows overlap");
        }
        assert!(w.iter().all(|w| w.len() == 512));
        let w = calibration_windows(&t, 100, 4, 2048).unwrap();
        assert_eq!(
            w.iter().map(|w| w[0]).collect::<Vec<_>>(),
            vec![0, 1633, 3266, 4900]
        );
        let w = calibration_windows(&t[..2048], 2048, 16, 2048).unwrap();
        assert_eq!(w.len(), 1);
        let e = calibration_windows(&t[..2000], 512, 16, 2048)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("calibration text too short: 2000 tokens, need ≥ 2048"),
            "{e}"
        );
        let e = calibration_windows(&t[..3000], 4096, 16, 2048)
            .unwrap_err()
            .to_string();
        assert!(e.contains("need ≥ 4096"), "{e}");
        assert!(calibration_windows(&t, 0, 16, 0).is_err());
        assert!(calibration_windows(&t, 16, 0, 0).is_err());
    }
}
