//! Per-expert sensitivity for bit allocation (`quantize --expert-bits
//! auto`): how much each routed expert's output error at each candidate
//! format matters, measured on the tokens the calibration text routes to
//! it. `mm_quant::alloc::allocate` then picks one format per expert under
//! a size budget.
//!
//! An expert's cost at format `f` is its routing frequency times its output
//! error: `freq_e · Σ_w err_w(f)`, with `freq_e = (n_e + 1)/(N + 1)` the
//! share of the `N` tokens entering the layer that are routed to it
//! (add-one smoothed, so an expert the calibration text never picks is
//! still not free to ruin), and `err_w(f) = Σ_r δ_r·H_w·δ_rᵀ` the
//! Hessian-weighted output error of each of its weights `w` (gate, up,
//! down) quantized to `f` by the caller's quantizer (RTN or GPTQ), `H_w`
//! from its own routed tokens (shrunk towards the layer-wide Hessian as
//! GPTQ does when they are few, [`ExpertPolicy`]). That is the mean
//! squared output error per routed token, times two, summed over the
//! expert's projections, times how often it runs. The Hessians are those
//! of the unquantized model (one layer at a time, the streams moving
//! through unquantized layers).

use std::collections::HashMap;

use mm_core::weight::MmFormat;
use mm_core::{Error, Result, WeightFormat};
use mm_models::DecoderModel;
use mm_quant::gptq::Hessian;

use super::{
    complete_expert_stats, names_filter, routed_expert, stage_of, CalibOptions, ExpertPolicy,
    SequentialCalib,
};

/// One routed expert's measured cost at every candidate format.
#[derive(Clone, Debug)]
pub struct ExpertCost {
    pub layer: usize,
    pub expert: usize,
    /// Its quantized weights (gate, up, down in the model's order).
    pub weights: Vec<String>,
    /// Parameters of those weights.
    pub params: usize,
    /// Calibration tokens routed to it.
    pub tokens: usize,
    /// `(tokens + 1) / (tokens entering the layer + 1)`.
    pub frequency: f64,
    /// Per candidate, per weight: the format it is stored in (the
    /// candidate, or what `fit` made of it for the weight's row length).
    pub formats: Vec<Vec<MmFormat>>,
    /// Per candidate: stored bits of all its weights (codes, scales, zeros).
    pub bits: Vec<f64>,
    /// Per candidate: `Σ_w err_w` (see the module docs).
    pub errors: Vec<f64>,
}

impl ExpertCost {
    /// The cost the allocation minimises at candidate `k`:
    /// frequency × output error.
    pub fn sensitivity(&self, k: usize) -> f64 {
        self.frequency * self.errors[k]
    }
}

/// Quantizes one weight (`name`, `rows × cols` values, its Hessian, a
/// format) and returns the dequantized values.
pub type QuantizeFn<'a> =
    &'a (dyn Fn(&str, &[f32], usize, usize, &Hessian, MmFormat) -> Result<Vec<f32>> + Sync);

/// Measures every routed expert of `model` (left unquantized) at each of
/// `formats`: one sequential pass over the calibration windows of `tokens`
/// (see [`SequentialCalib`]), each expert's Hessians from its routed tokens
/// ([`ExpertPolicy`] for experts with few), then each of its weights
/// quantized by `quantize` at each format (`fit(format, cols)`: the format
/// a weight with rows of `cols` gets, e.g. a smaller group). Experts come
/// in layer, expert order. `progress(layer, layers)`. Memory: one layer's
/// expert Hessians (gate/up share one).
#[allow(clippy::too_many_arguments)]
pub fn measure_experts(
    model: &mut DecoderModel,
    tokens: &[u32],
    opts: &CalibOptions,
    formats: &[MmFormat],
    fit: &dyn Fn(MmFormat, usize) -> Result<MmFormat>,
    policy: &ExpertPolicy,
    quantize: QuantizeFn,
    progress: &dyn Fn(usize, usize),
) -> Result<Vec<ExpertCost>> {
    if formats.is_empty() {
        return Err(Error::Invalid(
            "per-expert bit allocation needs at least one candidate format".into(),
        ));
    }
    let mut seq = SequentialCalib::new(model, tokens, opts)?;
    let entering = seq.windows() * opts.window;
    let n_layers = model.num_layers();
    let mut out = Vec::new();
    for l in 0..n_layers {
        progress(l, n_layers);
        // Per expert, its weights (name, rows, cols) in model order.
        let mut experts: Vec<(usize, Vec<(String, usize, usize)>)> = Vec::new();
        for lin in model.linears() {
            let Some((layer, e)) = routed_expert(lin.name()) else {
                continue;
            };
            if layer != l {
                continue;
            }
            let w = (
                lin.name().to_string(),
                lin.weight.shape[0],
                lin.weight.shape[1],
            );
            match experts.iter_mut().find(|x| x.0 == e) {
                Some(x) => x.1.push(w),
                None => experts.push((e, vec![w])),
            }
        }
        if experts.is_empty() {
            seq.advance(model)?;
            continue;
        }
        // Probes: one weight per (expert, stage); weights of one stage
        // share the input, hence the Hessian.
        let mut probe_of: HashMap<String, String> = HashMap::new();
        let mut probes: Vec<String> = Vec::new();
        for (_, ws) in &experts {
            let mut by_stage: HashMap<usize, String> = HashMap::new();
            for (n, _, _) in ws {
                let stage = stage_of(n).map_or(0, |s| s.1);
                let p = by_stage.entry(stage).or_insert_with(|| {
                    probes.push(n.clone());
                    n.clone()
                });
                probe_of.insert(n.clone(), p.clone());
            }
        }
        let mut stats = seq.calibrate(model, names_filter(probes.clone()))?;
        let routed: HashMap<String, usize> = probes
            .iter()
            .map(|p| (p.clone(), stats.get(p).map_or(0, |s| s.hessian.n_samples())))
            .collect();
        complete_expert_stats(&mut seq, model, &probes, &mut stats, policy)?;
        let linears = model.linears();
        for (e, ws) in &experts {
            let tokens = ws
                .iter()
                .map(|w| routed[&probe_of[&w.0]])
                .max()
                .unwrap_or(0);
            let mut cost = ExpertCost {
                layer: l,
                expert: *e,
                weights: ws.iter().map(|w| w.0.clone()).collect(),
                params: ws.iter().map(|w| w.1 * w.2).sum(),
                tokens,
                frequency: (tokens + 1) as f64 / (entering + 1) as f64,
                formats: Vec::with_capacity(formats.len()),
                bits: Vec::with_capacity(formats.len()),
                errors: Vec::with_capacity(formats.len()),
            };
            let values: Vec<Vec<f32>> =
                ws.iter()
                    .map(|(n, rows, _)| {
                        let lin = linears.iter().find(|x| x.name() == n).ok_or_else(|| {
                            Error::Other(format!("the model has no weight '{n}'"))
                        })?;
                        mm_quant::dequantize_rows_ref(&lin.weight, 0..*rows)
                    })
                    .collect::<Result<_>>()?;
            for &f in formats {
                let (mut bits, mut err, mut fmts) = (0.0, 0.0, Vec::with_capacity(ws.len()));
                for ((n, rows, cols), v) in ws.iter().zip(&values) {
                    let wf = fit(f, *cols)?;
                    let h = &stats
                        .get(&probe_of[n])
                        .ok_or_else(|| Error::Other(format!("no Hessian for '{n}'")))?
                        .hessian;
                    let q = quantize(n, v, *rows, *cols, h, wf)?;
                    err += h.output_error(v, &q, *rows)?;
                    bits += 8.0 * WeightFormat::Mm(wf).stored_bytes(&[*rows, *cols])? as f64;
                    fmts.push(wf);
                }
                cost.formats.push(fmts);
                cost.bits.push(bits);
                cost.errors.push(err);
            }
            out.push(cost);
        }
        drop(linears);
        seq.advance(model)?;
    }
    progress(n_layers, n_layers);
    if out.is_empty() {
        return Err(Error::Invalid(
            "per-expert bit allocation: the model has no routed experts".into(),
        ));
    }
    Ok(out)
}

/// Picks each expert's candidate (index into the `formats` given to
/// [`measure_experts`]) so that the stored bits of all routed-expert
/// weights are at most `target_bpw` per parameter, minimising the summed
/// [`ExpertCost::sensitivity`] ([`mm_quant::alloc::allocate`]).
pub fn allocate_experts(costs: &[ExpertCost], target_bpw: f64) -> Result<Vec<usize>> {
    if !(target_bpw.is_finite() && target_bpw > 0.0) {
        return Err(Error::Invalid(format!(
            "--target-bpw {target_bpw} must be a positive number of bits per weight"
        )));
    }
    let params: usize = costs.iter().map(|c| c.params).sum();
    let units: Vec<Vec<mm_quant::alloc::Candidate>> = costs
        .iter()
        .map(|c| {
            (0..c.bits.len())
                .map(|k| mm_quant::alloc::Candidate {
                    bits: c.bits[k],
                    cost: c.sensitivity(k),
                })
                .collect()
        })
        .collect();
    mm_quant::alloc::allocate(&units, target_bpw * params as f64).map_err(|e| {
        let least: f64 = costs
            .iter()
            .map(|c| c.bits.iter().cloned().fold(f64::INFINITY, f64::min))
            .sum::<f64>()
            / params.max(1) as f64;
        Error::Invalid(format!(
            "--target-bpw {target_bpw} cannot be met: the smallest candidate format already takes {least:.3} bits per routed-expert weight ({e})"
        ))
    })
}
