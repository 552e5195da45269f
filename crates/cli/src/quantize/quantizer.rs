//! The per-tensor quantizer of the pipeline: round-to-nearest, or GPTQ with
//! Hessians collected from calibration text (`mm_quant::gptq`,
//! `mm_engine::calib`, docs/GPTQ.md).
//!
//! RTN gets blocks of rows (rows are independent). GPTQ gets whole weights:
//! its rows are independent too, but each call factors the weight's
//! Hessian, which should happen once per weight.
//!
//! GPTQ applies to the quantized linear weights of the decoder layers
//! (`model.layers.*`), whose inputs calibration observes; the embedding (a
//! lookup, not a product) and the LM head (which calibration sees at one
//! position per window) are quantized with RTN. Hessians are `in × in` f64
//! matrices: they are collected for as many layers at a time as fit in
//! [`HESSIAN_BUDGET`], one pass of the calibration windows per batch, in the
//! order the pipeline writes the weights, and dropped once used.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use mm_backend_cpu::CpuBackend;
use mm_core::weight::MmFormat;
use mm_core::{Device, Error, Result};
use mm_engine::calib::{
    calibration_tokens, calibration_windows, collect_hessians, is_decoder_layer_weight,
    CalibOptions, DEFAULT_MAX_WINDOWS, DEFAULT_MIN_TOKENS, DEFAULT_WINDOW,
};
use mm_formats::WeightSource;
use mm_models::DecoderModel;
use mm_quant::gptq::{gptq_quantize, GptqOptions, Hessian};
use mm_quant::mm::{quantize_rtn, QuantizedTensor};

/// Bytes of Hessians held at once (f64 `in × in` per weight).
pub const HESSIAN_BUDGET: usize = 4 << 30;

/// How codes are chosen.
pub enum Quantizer {
    Rtn,
    Gptq(Box<Gptq>),
}

/// GPTQ state: the unquantized model, the calibration tokens, and the
/// Hessians of the current batch of weights.
pub struct Gptq {
    model: RefCell<DecoderModel>,
    tokens: Vec<u32>,
    calib: CalibOptions,
    opts: GptqOptions,
    /// Weights quantized with GPTQ, in pipeline order, with their input width.
    weights: Vec<(String, usize)>,
    hessians: RefCell<HashMap<String, Hessian>>,
}

impl Quantizer {
    /// Whether `name` must be handed over whole (see the module docs).
    pub fn whole_tensor(&self, name: &str) -> bool {
        match self {
            Quantizer::Rtn => false,
            Quantizer::Gptq(g) => g.applies(name),
        }
    }

    /// Gets ready to quantize `name`: collects the Hessians of the next
    /// batch of weights when `name`'s is not at hand. `status` reports what
    /// is being done.
    pub fn prepare(&self, name: &str, status: &dyn Fn(String)) -> Result<()> {
        match self {
            Quantizer::Rtn => Ok(()),
            Quantizer::Gptq(g) if g.applies(name) => g.prepare(name, status),
            Quantizer::Gptq(_) => Ok(()),
        }
    }

    /// Quantizes `rows` rows of weight `name` (all of them for GPTQ weights).
    pub fn quantize(
        &self,
        name: &str,
        values: &[f32],
        rows: usize,
        cols: usize,
        fmt: MmFormat,
    ) -> Result<QuantizedTensor> {
        match self {
            Quantizer::Gptq(g) if g.applies(name) => {
                g.prepare(name, &|_| {})?;
                let hs = g.hessians.borrow();
                let h = hs.get(name).ok_or_else(|| {
                    Error::Other(format!(
                        "GPTQ: calibration collected no Hessian for '{name}' (the model never used it)"
                    ))
                })?;
                if h.cols() != cols {
                    return Err(Error::Other(format!(
                        "GPTQ: the Hessian of '{name}' is {n}x{n}, the weight has {cols} columns",
                        n = h.cols()
                    )));
                }
                gptq_quantize(values, rows, cols, h, fmt, &g.opts)
            }
            _ => quantize_rtn(values, rows, cols, fmt),
        }
    }

    /// GPTQ over the calibration text in `calib` for the quantized weights
    /// `weights` (name, input width; pipeline order): tokenizes the text with
    /// the model's tokenizer, checks there is enough of it, and loads the
    /// unquantized model (dense f32 on the CPU) to run it on.
    pub fn gptq(
        src_path: &Path,
        src: &dyn WeightSource,
        calib: &Path,
        weights: Vec<(String, usize)>,
        opts: GptqOptions,
    ) -> Result<Self> {
        let text = std::fs::read_to_string(calib).map_err(|e| Error::io(calib, e))?;
        let tok = mm_engine::tokenizer::load_for(src_path, src).map_err(|e| {
            Error::Other(format!(
                "GPTQ calibration needs the model's tokenizer, which could not be loaded: {e}"
            ))
        })?;
        let tokens = calibration_tokens(&tok, &text)?;
        let cfg = src.config();
        let calib_opts = CalibOptions {
            window: DEFAULT_WINDOW.min(cfg.max_position_embeddings),
            max_windows: DEFAULT_MAX_WINDOWS,
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
        let weights: Vec<(String, usize)> = weights
            .into_iter()
            .filter(|(n, _)| is_decoder_layer_weight(n))
            .collect();
        let cpu: Arc<dyn mm_core::Backend> = Arc::new(CpuBackend::new());
        let model = mm_models::load_model(src, &Device::new(cpu.clone(), cpu), &|_, _| {})
            .map_err(|e| Error::Other(format!("loading the model for GPTQ calibration: {e}")))?;
        Ok(Quantizer::Gptq(Box::new(Gptq {
            model: RefCell::new(model),
            tokens,
            calib: calib_opts,
            opts,
            weights,
            hessians: RefCell::new(HashMap::new()),
        })))
    }
}

impl Gptq {
    fn applies(&self, name: &str) -> bool {
        self.weights.iter().any(|(n, _)| n == name)
    }

    /// Collects the Hessians of `name` and the weights after it, as many
    /// as [`HESSIAN_BUDGET`] allows, unless `name`'s is already held.
    fn prepare(&self, name: &str, status: &dyn Fn(String)) -> Result<()> {
        if self.hessians.borrow().contains_key(name) {
            return Ok(());
        }
        let start = self
            .weights
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| Error::Other(format!("GPTQ: '{name}' is not a calibrated weight")))?;
        let mut batch = HashSet::new();
        let mut bytes = 0usize;
        for (n, cols) in &self.weights[start..] {
            let b = cols.saturating_mul(*cols).saturating_mul(8);
            if !batch.is_empty() && bytes.saturating_add(b) > HESSIAN_BUDGET {
                break;
            }
            bytes = bytes.saturating_add(b);
            batch.insert(n.clone());
        }
        status(format!(
            "calibrating {} weight(s) from {name} ({:.0} MB of Hessians)",
            batch.len(),
            bytes as f64 / 1e6
        ));
        self.hessians.borrow_mut().clear();
        let batch = Arc::new(batch);
        let filter = batch.clone();
        let opts = CalibOptions {
            filter: Some(Arc::new(move |n: &str| filter.contains(n))),
            ..self.calib.clone()
        };
        let hs = collect_hessians(
            &mut self.model.borrow_mut(),
            &self.tokens,
            &opts,
            &|_, _| {},
        )
        .map_err(|e| Error::Other(format!("GPTQ calibration: {e}")))?;
        *self.hessians.borrow_mut() = hs;
        Ok(())
    }
}
