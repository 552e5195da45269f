//! `quantize`: HF directory or GGUF in, metal-marlin quantized directory out.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};
use mm_quant::mm::{QuantMethod, ScaleSearch};

use crate::args::{MethodArg, QuantizeArgs, ScaleSearchArg};
use mm_quantize::{run as quantize, Options};

pub fn run(a: QuantizeArgs) -> Result<()> {
    let spec = a.src.or(a.model);
    let src: PathBuf = mm_engine::resolve::resolve_model(spec.as_deref())?;
    let opts = Options {
        src,
        out: a.out,
        format: a.format,
        group_size: a.group_size,
        recipe: a.recipe,
        keep: a.keep,
        method: match a.method {
            MethodArg::Rtn => QuantMethod::Rtn,
            MethodArg::Gptq => QuantMethod::Gptq,
        },
        calib: a.calib,
        shard_bytes: a.shard_size,
        force: a.force,
        group_fallback: a.group_fallback,
        act_order: a.act_order,
        refit_scales: a.refit_scales,
        propagate_error: a.propagate_error,
        propagate_residual: a.propagate_residual,
        tune: mm_engine::tune::TuneOptions {
            epochs: a.tune,
            lr: a.tune_lr,
            scale_lr: a.tune_scale_lr,
        },
        calib_windows: a.calib_windows,
        expert_min_tokens: a.expert_min_tokens,
        expert_bits: a.expert_bits.map(|_| mm_quantize::expert_bits::ExpertBits {
            target_bpw: a.target_bpw.unwrap_or(f64::NAN),
            formats: a.expert_formats.clone(),
        }),
        scale_search: match a.scale_search {
            ScaleSearchArg::Auto => None,
            ScaleSearchArg::Minmax => Some(ScaleSearch::MinMax),
            ScaleSearchArg::Mse => Some(ScaleSearch::Mse),
        },
        rotate: a.rotate,
        progress: std::io::stderr().is_terminal(),
    };
    let s = quantize(&opts).with_context(|| {
        format!(
            "quantizing {} into {}",
            opts.src.display(),
            opts.out.display()
        )
    })?;
    let mb = |b: u64| b as f64 / 1e6;
    let mix: Vec<String> = s
        .by_target
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    eprintln!(
        "wrote {} in {:.1} s: {} shard(s), {:.1} MB (source tensors {:.1} MB)",
        s.out.display(),
        s.seconds,
        s.shards,
        mb(s.out_bytes),
        mb(s.src_bytes)
    );
    eprintln!("tensors: {}", mix.join(", "));
    if !s.fallbacks.is_empty() {
        eprintln!(
            "{} tensor(s) use a smaller group than asked because their rows do not divide, e.g. {} {} -> {}",
            s.fallbacks.len(),
            s.fallbacks[0].0,
            mm_formats::mm_format_label(s.fallbacks[0].1),
            mm_formats::mm_format_label(s.fallbacks[0].2)
        );
    }
    if let Some(line) = &s.expert_bits {
        eprintln!("{line}");
    }
    if let Some(r) = &s.experts {
        eprintln!(
            "GPTQ of routed experts: {} experts, {} with fewer calibration tokens than --expert-min-tokens asks \
             took the layer-wide Hessian blend ({} of them saw no token)",
            r.experts, r.blended, r.unrouted
        );
        if r.not_propagated > 0 {
            eprintln!(
                "error propagation: not applied to {} routed-expert weights (their tokens differ between the \
                 unquantized and the quantized model; docs/GPTQ.md, \"Experts\")",
                r.not_propagated
            );
        }
    }
    Ok(())
}
