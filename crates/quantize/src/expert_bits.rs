//! `quantize --expert-bits auto --target-bpw B`: each routed expert's
//! format chosen from measured sensitivity (`mm_engine::calib::
//! measure_experts`, `allocate_experts`) so that all routed-expert weights
//! together take at most B bits per weight (codes, scales and zero-points
//! counted). Other weights follow `--format`, `--recipe` and `--keep` and
//! are not part of the budget. The choice becomes one exact-name rule per
//! expert weight, applied after every other rule, and is recorded in
//! `quantization_config.json` under `"expert_bits"`.

use std::path::Path;

use mm_core::weight::MmFormat;
use mm_core::{Error, Result};
use mm_engine::calib::{allocate_experts, measure_experts, ExpertCost, ExpertPolicy, QuantizeFn};
use mm_formats::{mm_format_label, WeightSource};
use mm_quant::gptq::{gptq_quantize, GptqOptions, Hessian};
use mm_quant::mm::{quantize_rtn_with, QuantMethod, ScaleSearch};
use serde_json::{json, Value};

use super::quantizer::{calibration, calibration_model};
use super::rules::{parse_target, Rule, Target};
use super::{fallback_group, scale_search_for};

/// Candidate formats when `--expert-formats` is not given.
pub const DEFAULT_EXPERT_FORMATS: &str = "int2,int3,int4,int8";

/// What `--expert-bits auto` was asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpertBits {
    /// Bits per routed-expert weight, at most.
    pub target_bpw: f64,
    /// Comma-separated candidate formats (`None`: [`DEFAULT_EXPERT_FORMATS`]).
    pub formats: Option<String>,
}

/// The allocation: rules to append and the JSON record.
pub struct Allocation {
    pub rules: Vec<Rule>,
    pub record: Value,
    /// One line for the run's summary.
    pub summary: String,
}

/// Parses the candidate list: quantized formats, each with the default
/// group unless it names one (`int4/g64`); with whether it named one.
pub fn parse_formats(list: &str, default_group: u32) -> Result<Vec<(MmFormat, bool)>> {
    let mut out: Vec<(MmFormat, bool)> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match parse_target(item, default_group)
            .map_err(|e| Error::Invalid(format!("--expert-formats: {e}")))?
        {
            Target::Quant(f) if !out.iter().any(|x| x.0 == f) => out.push((f, item.contains('/'))),
            Target::Quant(_) => {}
            Target::Dense(_) => {
                return Err(Error::Invalid(format!(
                    "--expert-formats: '{item}' is not a quantized format (the candidates are formats such as int2, int3, int4, int8)"
                )))
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Invalid(
            "--expert-formats lists no format (e.g. int2,int3,int4,int8)".into(),
        ));
    }
    Ok(out)
}

/// Everything the allocation needs from the run's options.
pub struct Context<'a> {
    pub src_path: &'a Path,
    pub src: &'a dyn WeightSource,
    pub calib: &'a Path,
    pub windows: usize,
    pub method: QuantMethod,
    pub gptq: GptqOptions,
    pub scale_search: Option<ScaleSearch>,
    pub policy: ExpertPolicy,
    pub default_group: u32,
    /// A format whose group does not divide a weight's rows may take a
    /// smaller group (else it is an error); a candidate that names its
    /// group takes a smaller one only with `group_fallback`.
    pub lenient_groups: bool,
    pub group_fallback: bool,
}

/// Measures every routed expert at every candidate and allocates.
pub fn allocate(ask: &ExpertBits, cx: &Context, status: &dyn Fn(String)) -> Result<Allocation> {
    let parsed = parse_formats(
        ask.formats.as_deref().unwrap_or(DEFAULT_EXPERT_FORMATS),
        cx.default_group,
    )?;
    let formats: Vec<MmFormat> = parsed.iter().map(|x| x.0).collect();
    let strict: Vec<MmFormat> = parsed.iter().filter(|x| x.1).map(|x| x.0).collect();
    let (tokens, copts) = calibration(cx.src_path, cx.src, cx.calib, cx.windows)?;
    let mut model = calibration_model(cx.src)?;
    let (lenient, fallback) = (cx.lenient_groups, cx.group_fallback);
    let fit = move |f: MmFormat, cols: usize| -> Result<MmFormat> {
        let may_lower = fallback || (lenient && !strict.contains(&f));
        match f.check_row_len(cols) {
            Ok(()) => Ok(f),
            Err(e) => fallback_group(f, cols).filter(|_| may_lower).ok_or_else(|| {
                Error::Invalid(format!(
                    "--expert-formats: {} cannot store expert rows of {cols}: {e} (pass --group-fallback, or name a group that divides {cols})",
                    mm_format_label(f)
                ))
            }),
        }
    };
    let (method, gopts, asked) = (cx.method, cx.gptq, cx.scale_search);
    let quantize = move |_: &str, v: &[f32], rows, cols, h: &Hessian, f: MmFormat| {
        let q = match method {
            QuantMethod::Rtn => {
                quantize_rtn_with(v, rows, cols, f, scale_search_for(asked, f, false))?
            }
            QuantMethod::Gptq => {
                let o = GptqOptions {
                    scale_search: scale_search_for(asked, f, true),
                    ..gopts
                };
                gptq_quantize(v, rows, cols, h, f, &o)?
            }
        };
        q.dequantize()
    };
    let qf: QuantizeFn = &quantize;
    let costs = measure_experts(
        &mut model,
        &tokens,
        &copts,
        &formats,
        &fit,
        &cx.policy,
        qf,
        &|l, n| status(format!("expert sensitivity: layer {}/{n}", (l + 1).min(n))),
    )
    .map_err(|e| Error::Other(format!("--expert-bits auto: {e}")))?;
    let pick = allocate_experts(&costs, ask.target_bpw)?;
    Ok(record(&costs, &pick, &formats, ask.target_bpw))
}

/// The rules, JSON record and summary line of an allocation.
fn record(costs: &[ExpertCost], pick: &[usize], formats: &[MmFormat], target: f64) -> Allocation {
    let params: usize = costs.iter().map(|c| c.params).sum();
    let bits: f64 = costs.iter().zip(pick).map(|(c, &k)| c.bits[k]).sum();
    let achieved = bits / params.max(1) as f64;
    let mut rules = Vec::new();
    let mut experts = Vec::new();
    let mut count = vec![0usize; formats.len()];
    for (c, &k) in costs.iter().zip(pick) {
        count[k] += 1;
        for (name, &f) in c.weights.iter().zip(&c.formats[k]) {
            rules.push(Rule {
                source: format!("expert-bits: {name}"),
                re: regex::Regex::new(&format!("^{}$", regex::escape(name)))
                    .expect("an escaped name is a valid regex"),
                target: Target::Quant(f),
                explicit_group: true,
            });
        }
        experts.push(json!({
            "layer": c.layer,
            "expert": c.expert,
            "format": mm_format_label(formats[k]),
            "tokens": c.tokens,
            "frequency": c.frequency,
            "sensitivity": (0..c.bits.len()).map(|j| c.sensitivity(j)).collect::<Vec<_>>(),
        }));
    }
    let labels: Vec<String> = formats.iter().map(|f| mm_format_label(*f)).collect();
    let mix: Vec<String> = labels
        .iter()
        .zip(&count)
        .filter(|(_, &n)| n > 0)
        .map(|(l, n)| format!("{l} ×{n}"))
        .collect();
    Allocation {
        rules,
        record: json!({
            "target_bpw": target,
            "achieved_bpw": achieved,
            "routed_expert_params": params,
            "candidates": labels,
            "cost": "routing frequency × Hessian-weighted output error on the expert's routed tokens",
            "experts": experts,
        }),
        summary: format!(
            "per-expert bits: {} experts, {achieved:.3} bits per routed-expert weight (target {target}): {}",
            costs.len(),
            mix.join(", ")
        ),
    }
}
