//! The per-tensor quantizer of the pipeline: round-to-nearest, or GPTQ with
//! Hessians collected from calibration text.
//!
//! The pipeline hands a quantizer row blocks of one weight at a time
//! (`values`: `rows × cols` f32, row-major). Both methods treat rows
//! independently — GPTQ's error feedback runs along the columns of each
//! row, with one Hessian (`cols × cols`) shared by all rows of a weight — so
//! blocks of rows give the same result as the whole weight and memory stays
//! bounded.

use std::collections::HashMap;
use std::path::Path;

use mm_core::weight::MmFormat;
use mm_core::{Error, Result};
use mm_formats::WeightSource;
use mm_quant::mm::{quantize_rtn, QuantizedTensor};

/// Fewest calibration tokens GPTQ accepts. A weight's Hessian is
/// `Σ xᵀx` over the tokens seen; with fewer tokens than a few hundred the
/// estimate is dominated by dampening and GPTQ does no better than RTN.
pub const MIN_CALIB_TOKENS: usize = 512;

/// Per-weight GPTQ Hessians `H = 2/n Σ xᵀx` (`cols × cols`, row-major
/// f32), keyed by the weight's name (`model.layers.0.mlp.up_proj.weight`).
#[derive(Default)]
pub struct Hessians {
    pub by_weight: HashMap<String, (usize, Vec<f32>)>,
}

/// How codes are chosen.
pub enum Quantizer {
    Rtn,
    /// Built by [`Quantizer::gptq`] once the GPTQ module is available.
    #[allow(dead_code)]
    Gptq {
        hessians: Hessians,
    },
}

impl Quantizer {
    /// Quantizes a block of `rows` rows of weight `name`.
    pub fn quantize(
        &self,
        name: &str,
        values: &[f32],
        rows: usize,
        cols: usize,
        fmt: MmFormat,
    ) -> Result<QuantizedTensor> {
        match self {
            Quantizer::Rtn => quantize_rtn(values, rows, cols, fmt),
            Quantizer::Gptq { hessians } => {
                let (n, _h) = hessians.by_weight.get(name).ok_or_else(|| {
                    Error::Other(format!(
                        "GPTQ: no Hessian was collected for '{name}' (the calibration pass did not reach it)"
                    ))
                })?;
                if *n != cols {
                    return Err(Error::Other(format!(
                        "GPTQ: the Hessian of '{name}' is {n}x{n}, the weight has {cols} columns"
                    )));
                }
                Err(gptq_unavailable())
            }
        }
    }

    /// GPTQ over the calibration text in `calib`: tokenizes it with the
    /// model's tokenizer, checks there is enough of it, and collects one
    /// Hessian per linear weight by running the unquantized model over it.
    pub fn gptq(src_path: &Path, src: &dyn WeightSource, calib: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(calib).map_err(|e| Error::io(calib, e))?;
        let tok = mm_engine::tokenizer::load_for(src_path, src).map_err(|e| {
            Error::Other(format!(
                "GPTQ calibration needs the model's tokenizer, which could not be loaded: {e}"
            ))
        })?;
        let ids = tok.encode(&text, false)?;
        if ids.len() < MIN_CALIB_TOKENS {
            return Err(Error::Invalid(format!(
                "calibration text {} is too short: {} tokens, GPTQ needs at least {MIN_CALIB_TOKENS} \
                 (a few thousand tokens of text like the model's use are better)",
                calib.display(),
                ids.len()
            )));
        }
        let vocab = src.config().vocab_size;
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::Invalid(format!(
                "the tokenizer gives id {bad} for the calibration text, outside the model's vocabulary of {vocab}"
            )));
        }
        Err(gptq_unavailable())
    }
}

fn gptq_unavailable() -> Error {
    Error::Other(
        "GPTQ requires the gptq module (mm_quant::gptq and the engine's Hessian collector), \
         which this build does not include yet; use --method rtn"
            .into(),
    )
}
