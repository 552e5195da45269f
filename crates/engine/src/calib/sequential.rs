//! Layer-by-layer calibration (GPTQ's reference schedule): the residual
//! stream of every calibration window is kept at the input of the next
//! layer to quantize, so that layer's Hessians are collected from what the
//! already-quantized layers before it produce, and each layer runs alone
//! (one layer forward per stage, not a whole model pass).
//!
//! Memory: `windows × window × hidden` f32 for the residual streams
//! (16 × 512 × 576 × 4 B = 19 MB for SmolLM2) and one KV cache.
//!
//! Use: for each layer `l` in order, for each stage `s` of [`stage_of`](super::stage_of),
//! call [`SequentialCalib::hessians`] (or [`SequentialCalib::calibrate`])
//! for the stage's weights, quantize them and put the quantized weights
//! into the model ([`DecoderModel::linear_mut`]); then
//! [`SequentialCalib::advance`].
//!
//! Error propagation ([`SequentialCalib::with_reference`]): a second set of
//! streams runs through the *unquantized* layers. When a layer is first
//! calibrated, the unquantized layer is run on them and every linear
//! input it sees is kept (per window); the quantized pass then also
//! accumulates, per weight, `D = 2·(X − X̂)ᵀX̂/n` between those reference
//! inputs `X` and its own `X̂` (`mm_quant::gptq::ErrorCross`), which
//! `propagate_error` turns into the weight that GPTQ should fit. Memory:
//! one more set of streams, plus one layer's linear inputs for every
//! window (16 × 512 × (3·576 + 1536) × 4 B = 107 MB for SmolLM2).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mm_core::{Error, KvDType, Result, Tensor};
use mm_models::{DecoderModel, KvCache, LinearObserver};
use mm_quant::gptq::{ErrorCross, Hessian};

use super::stages::{residual_point, routed_expert};
use super::{calibration_windows, hessian_observer, take_hessians, CalibOptions, NameFilter};

/// Residual streams of the calibration windows at the input of layer
/// [`next_layer`](Self::next_layer).
pub struct SequentialCalib {
    /// One `[window, hidden]` stream per window.
    streams: Vec<Tensor>,
    positions: Vec<u32>,
    cache: KvCache,
    layer: usize,
    /// The unquantized model's side, with error propagation.
    reference: Option<Reference>,
}

/// The unquantized model's streams and one layer's linear inputs.
struct Reference {
    /// At the input of `layer`, or at its output once it is recorded.
    streams: Vec<Tensor>,
    /// Once `layer` is recorded: the streams at its input and between its
    /// attention and MLP blocks (what `o_proj` and `down_proj` add to).
    layer_in: Vec<Tensor>,
    mid: Vec<Tensor>,
    /// The layer whose inputs `inputs` holds.
    recorded: Option<usize>,
    /// Per weight name, its input `[window, in]` in every window (weights
    /// that share an input share the buffer).
    inputs: Arc<HashMap<String, Vec<Arc<Vec<f32>>>>>,
}

/// What calibration gives for one weight.
pub struct WeightStats {
    /// `2·X̂ᵀX̂/n` of the inputs it sees in the partly quantized model.
    pub hessian: Hessian,
    /// With error propagation: `2·(X − X̂)ᵀX̂/n` against the unquantized
    /// model's inputs `X` (same rows). `None` for routed experts, whose
    /// tokens differ between the two models (docs/GPTQ.md, "Experts").
    pub cross: Option<ErrorCross>,
    /// With error propagation, for weights whose output is added to the
    /// residual stream (`o_proj`, `down_proj`): `2·(h − ĥ)ᵀX̂/n`, the
    /// unquantized minus the quantized model's stream at that addition.
    pub residual: Option<ErrorCross>,
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
            // Calibration sees the model's f32 arithmetic, whatever the
            // backend's default KV type.
            cache: model.new_cache_with(opts.window, KvDType::F32)?,
            layer: 0,
            reference: None,
        })
    }

    /// Turns on error propagation (see the module docs). Call before the
    /// first layer is calibrated; the model's weights must still be the
    /// unquantized ones then, and every layer's must be when that layer is
    /// first calibrated (or advanced through).
    pub fn with_reference(mut self) -> Self {
        self.reference = Some(Reference {
            streams: self.streams.clone(),
            layer_in: Vec::new(),
            mid: Vec::new(),
            recorded: None,
            inputs: Arc::new(HashMap::new()),
        });
        self
    }

    /// The layer whose inputs the streams are.
    pub fn next_layer(&self) -> usize {
        self.layer
    }

    /// The residual streams entering layer [`next_layer`](Self::next_layer),
    /// one `[window, hidden]` per window.
    pub fn streams(&self) -> &[Tensor] {
        &self.streams
    }

    /// With error propagation, once layer [`next_layer`](Self::next_layer)
    /// has been calibrated: the unquantized model's streams at its output.
    pub fn reference_outputs(&self) -> Option<&[Tensor]> {
        self.reference
            .as_ref()
            .filter(|r| r.recorded == Some(self.layer))
            .map(|r| r.streams.as_slice())
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
        Ok(self
            .calibrate(model, filter)?
            .into_iter()
            .map(|(n, s)| (n, s.hessian))
            .collect())
    }

    /// The Hessians of the weights `filter` selects as if every token
    /// entering a MoE block were routed to each of its experts: a routed
    /// expert's gate/up see every row entering the block, its down the
    /// expert's own activations of every row (with the expert's weights as
    /// they are now). Other weights see what they always see. Layer
    /// [`next_layer`](Self::next_layer), the streams do not move, no error
    /// propagation statistics. GPTQ uses these as the layer-wide prior of
    /// experts that see too few tokens
    /// ([`mm_quant::gptq::Hessian::shrink_towards`]).
    pub fn hessians_all_tokens(
        &mut self,
        model: &mut DecoderModel,
        filter: NameFilter,
    ) -> Result<HashMap<String, Hessian>> {
        let (observer, state) = hessian_observer(filter);
        model.set_linear_observer(Some(observer));
        model.set_moe_observe_all_tokens(true);
        let reference = self.reference.take();
        let run = self.run_layer(model, false);
        self.reference = reference;
        model.set_moe_observe_all_tokens(false);
        model.set_linear_observer(None);
        run?;
        take_hessians(&state)
    }

    /// [`hessians`](Self::hessians), and with error propagation each
    /// weight's [`ErrorCross`] too. The first call for a layer runs the
    /// unquantized layer first (see [`with_reference`](Self::with_reference)).
    pub fn calibrate(
        &mut self,
        model: &mut DecoderModel,
        filter: NameFilter,
    ) -> Result<HashMap<String, WeightStats>> {
        self.record_reference(model)?;
        let (hess, state) = hessian_observer(filter.clone());
        let reference = self.reference.as_ref().map(|r| r.inputs.clone());
        let crosses = Arc::new(Mutex::new(HashMap::<String, (usize, ErrorCross)>::new()));
        // Inputs of residual writers, per window, for their residual error.
        let kept = Arc::new(Mutex::new(HashMap::<String, Vec<Tensor>>::new()));
        let observer: LinearObserver = match reference {
            None => hess,
            Some(inputs) => {
                let (crosses, kept) = (crosses.clone(), kept.clone());
                Arc::new(move |name: &str, x: &Tensor| {
                    hess(name, x)?;
                    // A routed expert's rows are the tokens routed to it,
                    // which differ between the two models: no pairs.
                    if !filter(name) || routed_expert(name).is_some() {
                        return Ok(());
                    }
                    if residual_point(name).is_some() {
                        kept.lock()
                            .map_err(|_| poisoned())?
                            .entry(name.to_string())
                            .or_default()
                            .push(x.clone());
                    }
                    add_cross(&inputs, &crosses, name, x)
                })
            }
        };
        model.set_linear_observer(Some(observer));
        let run = self.run_layer(model, false);
        model.set_linear_observer(None);
        let mids = run?;
        let mut crosses = std::mem::take(&mut *crosses.lock().map_err(|_| poisoned())?);
        let kept = std::mem::take(&mut *kept.lock().map_err(|_| poisoned())?);
        let mut residuals = self.residual_errors(kept, &mids)?;
        let with_reference = self.reference.is_some();
        take_hessians(&state)?
            .into_iter()
            .map(|(name, hessian)| {
                let cross = match crosses.remove(&name) {
                    Some((_, c)) => Some(c),
                    None if with_reference && routed_expert(&name).is_none() => {
                        return Err(Error::Other(format!(
                            "error propagation: no reference input for '{name}'"
                        )))
                    }
                    None => None,
                };
                let residual = residuals.remove(&name);
                Ok((
                    name,
                    WeightStats {
                        hessian,
                        cross,
                        residual,
                    },
                ))
            })
            .collect()
    }

    /// The residual error `2·(h − ĥ)ᵀX̂/n` of each residual writer from its
    /// inputs `kept` (one per window): `h − ĥ` is the reference minus this
    /// pass's stream where the writer's output is added (the layer's input
    /// for `o_proj`, `mids` for `down_proj`).
    fn residual_errors(
        &self,
        kept: HashMap<String, Vec<Tensor>>,
        mids: &[Tensor],
    ) -> Result<HashMap<String, ErrorCross>> {
        let Some(r) = &self.reference else {
            return Ok(HashMap::new());
        };
        let mut out = HashMap::new();
        for (name, xs) in kept {
            let (fp, q) = match residual_point(&name) {
                Some(0) => (&r.layer_in, self.streams.as_slice()),
                _ => (&r.mid, mids),
            };
            if xs.len() != fp.len() || xs.len() != q.len() {
                return Err(Error::Other(format!(
                    "error propagation: '{name}' saw {} windows, the residual streams are {} and {}",
                    xs.len(),
                    fp.len(),
                    q.len()
                )));
            }
            let mut acc: Option<ErrorCross> = None;
            for ((x, a), b) in xs.iter().zip(fp).zip(q) {
                let (rows, cols) = x.dims2()?;
                let (_, hidden) = a.dims2()?;
                let e: Vec<f32> = a
                    .to_vec()?
                    .iter()
                    .zip(b.to_vec()?)
                    .map(|(a, b)| a - b)
                    .collect();
                acc.get_or_insert_with(|| ErrorCross::with_error_width(hidden, cols))
                    .add_error(&e, &x.to_vec()?, rows)
                    .map_err(|e| Error::Invalid(format!("{name}: {e}")))?;
            }
            out.extend(acc.map(|a| (name, a)));
        }
        Ok(out)
    }

    /// Moves the streams through layer [`next_layer`](Self::next_layer) of
    /// `model` (as it is now, i.e. quantized): they become the inputs of the
    /// layer after it. With error propagation the reference streams move
    /// through the unquantized layer (recorded when it was first
    /// calibrated, or now).
    pub fn advance(&mut self, model: &mut DecoderModel) -> Result<()> {
        self.record_reference(model)?;
        self.run_layer(model, true)?;
        if let Some(r) = &mut self.reference {
            r.inputs = Arc::new(HashMap::new());
            r.layer_in.clear();
            r.mid.clear();
        }
        self.layer += 1;
        Ok(())
    }

    /// With error propagation, once per layer: runs layer `layer` (still
    /// unquantized) on the reference streams, keeping every linear input of
    /// the layer, and moves the reference streams to its output.
    fn record_reference(&mut self, model: &mut DecoderModel) -> Result<()> {
        self.check_layer(model)?;
        let l = self.layer;
        let Some(r) = &mut self.reference else {
            return Ok(());
        };
        if r.recorded == Some(l) {
            return Ok(());
        }
        let prefix = format!("model.layers.{l}.");
        let inputs = Arc::new(Mutex::new(HashMap::<String, Vec<Arc<Vec<f32>>>>::new()));
        let last = Arc::new(Mutex::new(None::<Arc<Vec<f32>>>));
        let sink = inputs.clone();
        let observer: LinearObserver = Arc::new(move |name: &str, x: &Tensor| {
            if !name.starts_with(&prefix) || routed_expert(name).is_some() {
                return Ok(());
            }
            let data = x.to_vec()?;
            let mut last = last.lock().map_err(|_| poisoned())?;
            let shared = match &*last {
                Some(prev) if **prev == data => prev.clone(),
                _ => Arc::new(data),
            };
            *last = Some(shared.clone());
            sink.lock()
                .map_err(|_| poisoned())?
                .entry(name.to_string())
                .or_default()
                .push(shared);
            Ok(())
        });
        model.set_linear_observer(Some(observer));
        let mut out = Vec::with_capacity(r.streams.len());
        let mut mid = Vec::with_capacity(r.streams.len());
        let mut run = || {
            for h in &r.streams {
                self.cache.clear();
                let (m, o) = model.forward_layer_mid(l, h, &self.positions, &mut self.cache)?;
                mid.push(m);
                out.push(o);
            }
            Ok::<(), Error>(())
        };
        let run = run();
        model.set_linear_observer(None);
        run?;
        r.layer_in = std::mem::replace(&mut r.streams, out);
        r.mid = mid;
        r.inputs = Arc::new(std::mem::take(&mut *inputs.lock().map_err(|_| poisoned())?));
        r.recorded = Some(l);
        Ok(())
    }

    /// Runs layer [`next_layer`](Self::next_layer) on every stream; with
    /// `keep` the streams move to its output. Returns the streams between
    /// the layer's attention and MLP blocks when error propagation needs
    /// them (without `keep`; else empty).
    fn run_layer(&mut self, model: &DecoderModel, keep: bool) -> Result<Vec<Tensor>> {
        self.check_layer(model)?;
        let l = self.layer;
        let mut mids = Vec::new();
        for h in &mut self.streams {
            self.cache.clear();
            let (mid, out) = model.forward_layer_mid(l, h, &self.positions, &mut self.cache)?;
            if keep {
                *h = out;
            } else if self.reference.is_some() {
                mids.push(mid);
            }
        }
        Ok(mids)
    }

    fn check_layer(&self, model: &DecoderModel) -> Result<()> {
        if self.layer >= model.num_layers() {
            return Err(Error::Invalid(format!(
                "sequential calibration is past the last layer ({} layers)",
                model.num_layers()
            )));
        }
        Ok(())
    }
}

/// Adds window `k`'s pair (reference input, `x`) to `name`'s cross-product,
/// `k` being how many inputs of `name` were seen before in this pass.
fn add_cross(
    inputs: &HashMap<String, Vec<Arc<Vec<f32>>>>,
    crosses: &Mutex<HashMap<String, (usize, ErrorCross)>>,
    name: &str,
    x: &Tensor,
) -> Result<()> {
    let (rows, cols) = x.dims2()?;
    let mut crosses = crosses.lock().map_err(|_| poisoned())?;
    let (k, cross) = crosses
        .entry(name.to_string())
        .or_insert_with(|| (0, ErrorCross::new(cols)));
    let reference = inputs.get(name).and_then(|w| w.get(*k)).ok_or_else(|| {
        Error::Other(format!(
            "error propagation: the unquantized layer gave no input {} for '{name}'",
            *k
        ))
    })?;
    cross
        .add_rows(reference, &x.to_vec()?, rows)
        .map_err(|e| Error::Invalid(format!("{name}: {e}")))?;
    *k += 1;
    Ok(())
}

fn poisoned() -> Error {
    Error::Other("calibration state poisoned by a panic".into())
}

/// A filter that selects exactly `names`.
pub fn names_filter(names: Vec<String>) -> NameFilter {
    Arc::new(move |n: &str| names.iter().any(|m| m == n))
}
