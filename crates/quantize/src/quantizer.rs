//! The per-tensor quantizer of the pipeline: round-to-nearest, or GPTQ with
//! Hessians collected from calibration text (`mm_quant::gptq`,
//! `mm_engine::calib`, docs/GPTQ.md).
//!
//! RTN weights are quantized by the pipeline a block of rows at a time
//! (rows are independent); GPTQ weights are made here, from the model, and
//! handed over whole ([`Quantizer::take`]).
//!
//! GPTQ applies to the quantized linear weights of the decoder layers
//! (`model.layers.*`), whose inputs calibration observes; the embedding (a
//! lookup, not a product) and the LM head (which calibration sees at one
//! position per window) are quantized with RTN. GPTQ weights are quantized
//! in the reference's sequential schedule ([`SequentialCalib`]): layer by
//! layer and stage by stage, each stage's Hessians collected with every
//! earlier weight already replaced by its quantized form, so later layers
//! are fitted to the error of earlier ones. The pipeline writes tensors in
//! name order (`layers.10` before `layers.2`), so asking for a weight
//! quantizes every layer up to its own and keeps the results until they
//! are written (at most the quantized size of the model).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use mm_backend_cpu::{ActPrecision, CpuBackend};
use mm_core::weight::MmFormat;
use mm_core::{Device, Error, Result};
use mm_engine::calib::{
    calibration_tokens, calibration_windows, complete_expert_stats, names_filter, routed_expert,
    stage_of, CalibOptions, ExpertPolicy, SequentialCalib, DEFAULT_MIN_TOKENS, DEFAULT_WINDOW,
    STAGES,
};
use mm_engine::tune::{tune_block, Block, Param, TuneOptions, LINEARS};
use mm_formats::WeightSource;
use mm_models::DecoderModel;
use mm_quant::gptq::{gptq_quantize, propagate_error, GptqOptions};
use mm_quant::mm::{QuantizedTensor, ScaleSearch};
use mm_quant::ste::FakeQuant;

use super::scale_search_for;

/// How codes are chosen.
pub enum Quantizer {
    Rtn,
    Gptq(Box<Gptq>),
}

/// GPTQ state: the model (its layers up to the calibration point already
/// quantized), the calibration streams, and results not yet written.
pub struct Gptq {
    model: RefCell<DecoderModel>,
    seq: RefCell<SequentialCalib>,
    opts: GptqOptions,
    /// The asked scale rule (`None`: per format, [`scale_search_for`]).
    scale_search: Option<ScaleSearch>,
    /// Error propagation strength α (0: off; `mm_quant::gptq::propagate_error`).
    propagate: f64,
    /// With it, `o_proj` and `down_proj` also take up the residual stream's error.
    residual: bool,
    /// Block-wise tuning after each layer (`epochs` 0: off; `mm_engine::tune`).
    tune: TuneOptions,
    /// Weights quantized with GPTQ and their formats.
    weights: Vec<(String, MmFormat)>,
    /// Quantized weights waiting for the pipeline to ask for them.
    done: RefCell<HashMap<String, QuantizedTensor>>,
    /// Routed experts that see few calibration tokens.
    experts: ExpertPolicy,
    /// What happened to the routed experts so far.
    report: RefCell<ExpertReport>,
}

/// What GPTQ did with the routed experts of a mixture-of-experts model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpertReport {
    /// Routed experts `(layer, expert)` with a weight quantized by GPTQ.
    pub experts: usize,
    /// Of those, experts whose Hessian took the layer-wide prior because
    /// the calibration text routed too few tokens to them.
    pub blended: usize,
    /// Of those, experts no calibration token chose.
    pub unrouted: usize,
    /// Routed-expert weights quantized without error propagation (it was
    /// on for the other weights; see docs/GPTQ.md, "Experts").
    pub not_propagated: usize,
}

impl Quantizer {
    /// Gets ready to quantize `name`: for a GPTQ weight, quantizes every
    /// layer up to its own unless that is done. `status` reports progress.
    pub fn prepare(&self, name: &str, status: &dyn Fn(String)) -> Result<()> {
        match self {
            Quantizer::Gptq(g) if g.applies(name) => g.prepare(name, status),
            _ => Ok(()),
        }
    }

    /// With GPTQ of a mixture-of-experts model: what happened to its
    /// routed experts.
    pub fn expert_report(&self) -> Option<ExpertReport> {
        match self {
            Quantizer::Gptq(g) if g.report.borrow().experts > 0 => Some(g.report.borrow().clone()),
            _ => None,
        }
    }

    /// The quantized weight `name` (`rows × cols` in `fmt`) when this
    /// quantizer made it from the model itself (GPTQ); `None` when the
    /// pipeline is to quantize the source's values with RTN.
    pub fn take(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        fmt: MmFormat,
    ) -> Result<Option<QuantizedTensor>> {
        let Quantizer::Gptq(g) = self else {
            return Ok(None);
        };
        if !g.applies(name) {
            return Ok(None);
        }
        g.prepare(name, &|_| {})?;
        let q = g
            .done
            .borrow_mut()
            .remove(name)
            .ok_or_else(|| Error::Other(format!("GPTQ: '{name}' was asked for twice")))?;
        if (q.rows, q.cols, q.format) != (rows, cols, fmt) {
            return Err(Error::Other(format!(
                "GPTQ: '{name}' was quantized as {}x{} {:?}, the pipeline wants {rows}x{cols} {fmt:?}",
                q.rows, q.cols, q.format
            )));
        }
        Ok(Some(q))
    }

    /// GPTQ over the calibration text in `calib` for the quantized weights
    /// `weights` (name, format): tokenizes the text with the model's
    /// tokenizer, checks there is enough of it, loads the model as stored
    /// (on the CPU) and embeds the calibration windows. With a `propagate`
    /// above 0 each weight is first moved towards the unquantized model's
    /// output by that strength (error propagation, docs/GPTQ.md); with
    /// `residual` the weights that write the residual stream also take up
    /// the error it carries. With `tune.epochs` > 0 each layer's quantized
    /// weights are then trained against the unquantized model's output
    /// (`mm_engine::tune`). At most `windows` calibration windows are used.
    /// Routed experts with few routed tokens follow `experts`.
    #[allow(clippy::too_many_arguments)]
    pub fn gptq(
        src_path: &Path,
        src: &dyn WeightSource,
        calib: &Path,
        weights: Vec<(String, MmFormat)>,
        opts: GptqOptions,
        scale_search: Option<ScaleSearch>,
        propagate: f64,
        residual: bool,
        tune: TuneOptions,
        windows: usize,
        experts: ExpertPolicy,
    ) -> Result<Self> {
        let (tokens, calib_opts) = calibration(src_path, src, calib, windows)?;
        let weights: Vec<(String, MmFormat)> = weights
            .into_iter()
            .filter(|(n, _)| stage_of(n).is_some())
            .collect();
        let model = calibration_model(src)?;
        if tune.epochs > 0 {
            if let Some(l) = (0..model.num_layers()).find(|&l| {
                model
                    .layer(l)
                    .is_some_and(|x| x.attn.gqa().is_none() || x.ffn.as_mlp().is_none())
            }) {
                return Err(Error::Invalid(format!(
                    "--tune supports dense layers (grouped-query attention and an MLP) only; \
                     layer {l} has multi-head latent attention or a mixture of experts: leave out --tune"
                )));
            }
        }
        let mut seq = SequentialCalib::new(&model, &tokens, &calib_opts)
            .map_err(|e| Error::Other(format!("GPTQ calibration: {e}")))?;
        if propagate > 0.0 {
            seq = seq.with_reference();
        }
        Ok(Quantizer::Gptq(Box::new(Gptq {
            model: RefCell::new(model),
            seq: RefCell::new(seq),
            opts,
            scale_search,
            propagate,
            residual,
            tune,
            weights,
            done: RefCell::new(HashMap::new()),
            experts,
            report: RefCell::new(ExpertReport::default()),
        })))
    }
}

impl Gptq {
    fn applies(&self, name: &str) -> bool {
        self.weights.iter().any(|(n, _)| n == name)
    }

    /// Quantizes layers until `name`'s is done (see the module docs).
    fn prepare(&self, name: &str, status: &dyn Fn(String)) -> Result<()> {
        if self.done.borrow().contains_key(name) {
            return Ok(());
        }
        let (layer, _) = stage_of(name)
            .ok_or_else(|| Error::Other(format!("GPTQ: '{name}' is not a decoder-layer weight")))?;
        if layer < self.seq.borrow().next_layer() {
            return Err(Error::Other(format!(
                "GPTQ: '{name}' was asked for twice (layer {layer} is done)"
            )));
        }
        while self.seq.borrow().next_layer() <= layer {
            self.quantize_layer(status)
                .map_err(|e| Error::Other(format!("GPTQ calibration: {e}")))?;
        }
        Ok(())
    }

    /// GPTQ for every stage of the next layer, then moves the calibration
    /// streams through the quantized layer.
    fn quantize_layer(&self, status: &dyn Fn(String)) -> Result<()> {
        let mut model = self.model.borrow_mut();
        let mut seq = self.seq.borrow_mut();
        let l = seq.next_layer();
        let n_layers = model.num_layers();
        let device = model.device().clone();
        let tuning = self.tune.epochs > 0
            && self
                .weights
                .iter()
                .any(|(n, _)| stage_of(n).map(|s| s.0) == Some(l));
        // Without error propagation the targets are the unquantized
        // layer's outputs, so tuning needs its weights before GPTQ.
        let original = if tuning && self.propagate == 0.0 {
            Some(layer_weights(&model, l)?)
        } else {
            None
        };
        for stage in 0..STAGES {
            let names: Vec<(String, MmFormat)> = self
                .weights
                .iter()
                .filter(|(n, _)| stage_of(n) == Some((l, stage)))
                .cloned()
                .collect();
            if names.is_empty() {
                continue;
            }
            status(format!(
                "GPTQ layer {}/{n_layers}, stage {}/{STAGES} ({} windows)",
                l + 1,
                stage + 1,
                seq.windows()
            ));
            let list: Vec<String> = names.iter().map(|(n, _)| n.clone()).collect();
            let mut stats = seq.calibrate(&mut model, names_filter(list.clone()))?;
            let blended =
                complete_expert_stats(&mut seq, &mut model, &list, &mut stats, &self.experts)?;
            self.note_experts(&list, &blended);
            for (name, fmt) in names {
                let st = stats.get(&name).ok_or_else(|| {
                    Error::Other(format!("no Hessian for '{name}' (the model never used it)"))
                })?;
                let h = &st.hessian;
                let lin = model
                    .linear_mut(&name)
                    .ok_or_else(|| Error::Other(format!("the model has no weight '{name}'")))?;
                let (rows, cols) = (lin.weight.shape[0], lin.weight.shape[1]);
                if h.cols() != cols {
                    return Err(Error::Other(format!(
                        "the Hessian of '{name}' is {n}x{n}, the weight has {cols} columns",
                        n = h.cols()
                    )));
                }
                let mut values = mm_quant::dequantize_rows_ref(&lin.weight, 0..rows)?;
                if let Some(cross) = &st.cross {
                    values = propagate_error(
                        &values,
                        rows,
                        cols,
                        h,
                        cross,
                        st.residual.as_ref().filter(|_| self.residual),
                        self.propagate,
                        self.opts.damp_percent,
                    )
                    .map_err(|e| Error::Other(format!("{name}: {e}")))?;
                }
                let opts = GptqOptions {
                    scale_search: scale_search_for(self.scale_search, fmt, true),
                    ..self.opts
                };
                let q = gptq_quantize(&values, rows, cols, h, fmt, &opts)?;
                lin.set_weight(q.clone().into_weight_data()?, &device)?;
                self.done.borrow_mut().insert(name, q);
            }
        }
        if tuning {
            status(format!("tuning layer {}/{n_layers}", l + 1));
            self.tune_layer(&mut model, &seq, l, original.as_deref(), status)?;
        }
        seq.advance(&mut model)
    }

    /// Counts the routed experts among one stage's weights `names` and
    /// those of `blended` (experts are counted once, at their gate/up
    /// stage, or at down when only that is quantized with GPTQ).
    fn note_experts(&self, names: &[String], blended: &[mm_engine::calib::Blended]) {
        let mut r = self.report.borrow_mut();
        let mut seen = std::collections::BTreeSet::new();
        for n in names {
            let Some(e) = routed_expert(n) else { continue };
            if self.propagate > 0.0 {
                r.not_propagated += 1;
            }
            let counted_before = stage_of(n).is_some_and(|(_, s)| s == 4)
                && self.weights.iter().any(|(m, _)| {
                    routed_expert(m) == Some(e) && stage_of(m).is_some_and(|(_, s)| s == 3)
                });
            if counted_before || !seen.insert(e) {
                continue;
            }
            r.experts += 1;
            let thin: Vec<_> = blended
                .iter()
                .filter(|b| routed_expert(&b.name) == Some(e))
                .collect();
            if !thin.is_empty() {
                r.blended += 1;
                r.unrouted += thin.iter().all(|b| b.tokens == 0) as usize;
            }
        }
    }

    /// Block-wise tuning of layer `l`'s quantized weights (see
    /// `mm_engine::tune`): inputs are the quantized model's streams, targets
    /// the unquantized model's (with error propagation), else the
    /// unquantized layer's output on those same inputs.
    fn tune_layer(
        &self,
        model: &mut DecoderModel,
        seq: &SequentialCalib,
        l: usize,
        original: Option<&[Vec<f32>]>,
        status: &dyn Fn(String),
    ) -> Result<()> {
        let block = Block::from_model(model, l)?;
        let inputs = seq
            .streams()
            .iter()
            .map(|t| t.to_vec())
            .collect::<Result<Vec<_>>>()?;
        let targets = match seq.reference_outputs() {
            Some(r) => r.iter().map(|t| t.to_vec()).collect::<Result<Vec<_>>>()?,
            None => {
                let original = original.ok_or_else(|| {
                    Error::Other(
                        "tuning without reference streams needs the layer's unquantized weights"
                            .into(),
                    )
                })?;
                let w: [&[f32]; 7] = std::array::from_fn(|i| original[i].as_slice());
                inputs
                    .iter()
                    .map(|x| Ok(block.forward(&w, x)?.0))
                    .collect::<Result<Vec<_>>>()?
            }
        };
        let names: Vec<String> = LINEARS
            .iter()
            .map(|n| format!("model.layers.{l}.{n}.weight"))
            .collect();
        let mut params = Vec::with_capacity(names.len());
        {
            let done = self.done.borrow();
            for name in &names {
                params.push(match done.get(name) {
                    Some(q) => Param::Tuned(FakeQuant::from_quantized(q)?),
                    None => {
                        let lin = model.linear_mut(name).ok_or_else(|| {
                            Error::Other(format!("the model has no weight '{name}'"))
                        })?;
                        Param::Fixed(mm_quant::dequantize_ref(&lin.weight)?)
                    }
                });
            }
        }
        let n_layers = model.num_layers();
        let report = tune_block(
            &block,
            &mut params,
            &inputs,
            &targets,
            &self.tune,
            &|e, v| {
                status(format!(
                    "tuning layer {}/{n_layers}: epoch {e}/{}, held-out loss {v:.3e}",
                    l + 1,
                    self.tune.epochs
                ))
            },
        )
        .map_err(|e| Error::Other(format!("tuning layer {l}: {e}")))?;
        tracing::info!(
            layer = l,
            val_before = report.val_before,
            val_after = report.val_after,
            best_epoch = report.best_epoch,
            train_first = report.train_first,
            train_last = report.train_last,
            "tuned"
        );
        let device = model.device().clone();
        for (name, p) in names.into_iter().zip(params) {
            if let Param::Tuned(f) = p {
                let q = f.to_quantized()?;
                model
                    .linear_mut(&name)
                    .ok_or_else(|| Error::Other(format!("the model has no weight '{name}'")))?
                    .set_weight(q.clone().into_weight_data()?, &device)?;
                self.done.borrow_mut().insert(name, q);
            }
        }
        Ok(())
    }
}

/// Layer `l`'s linear weights as f32, in `mm_engine::tune::LINEARS` order.
fn layer_weights(model: &DecoderModel, l: usize) -> Result<Vec<Vec<f32>>> {
    let linears = model.linears();
    LINEARS
        .iter()
        .map(|n| {
            let name = format!("model.layers.{l}.{n}.weight");
            let lin = linears
                .iter()
                .find(|x| x.name() == name)
                .ok_or_else(|| Error::Other(format!("the model has no weight '{name}'")))?;
            mm_quant::dequantize_ref(&lin.weight)
        })
        .collect()
}

/// The calibration text in `calib` as token ids of the model's tokenizer,
/// checked to be long enough for GPTQ's windows (at most `windows` of
/// them) and inside the vocabulary, and the windows' options.
pub fn calibration(
    src_path: &Path,
    src: &dyn WeightSource,
    calib: &Path,
    windows: usize,
) -> Result<(Vec<u32>, CalibOptions)> {
    let text = std::fs::read_to_string(calib).map_err(|e| Error::io(calib, e))?;
    let tok = mm_engine::tokenizer::load_for(src_path, src).map_err(|e| {
        Error::Other(format!(
            "calibration needs the model's tokenizer, which could not be loaded: {e}"
        ))
    })?;
    let tokens = calibration_tokens(&tok, &text)?;
    let cfg = src.config();
    let calib_opts = CalibOptions {
        window: DEFAULT_WINDOW.min(cfg.max_position_embeddings),
        max_windows: windows,
        min_tokens: DEFAULT_MIN_TOKENS,
        filter: None,
    };
    calibration_windows(
        &tokens,
        calib_opts.window,
        calib_opts.max_windows,
        calib_opts.min_tokens,
    )
    .map_err(|e| {
        Error::Invalid(format!(
            "{}: {} (a few thousand tokens of text like the model's use)",
            calib.display(),
            match e {
                Error::Invalid(m) => m,
                e => e.to_string(),
            }
        ))
    })?;
    if let Some(bad) = tokens.iter().find(|&&i| i as usize >= cfg.vocab_size) {
        return Err(Error::Invalid(format!(
            "the tokenizer gives id {bad} for the calibration text, outside the model's vocabulary of {}",
            cfg.vocab_size
        )));
    }
    Ok((tokens, calib_opts))
}

/// The source model loaded on the CPU for calibration.
pub fn calibration_model(src: &dyn WeightSource) -> Result<DecoderModel> {
    // Calibration runs with one 8-bit activation pass, as when every
    // GPTQ number in docs/QUALITY.md was measured. The default
    // inference precision (with the remainder pass) measured worse
    // here: SmolLM2 layers 0-1 int3-asym/g64, GPTQ act-order with its
    // defaults, held-out KL 0.049 against 0.030 (the CI test
    // `gptq_pipeline_beats_rtn_on_smollm2`).
    let cpu: Arc<dyn mm_core::Backend> = Arc::new(CpuBackend::with_activations(ActPrecision::Int8));
    mm_models::load_model(src, &Device::new(cpu.clone(), cpu), &|_, _| {})
        .map_err(|e| Error::Other(format!("loading the model for calibration: {e}")))
}
