//! The quantization pipeline behind `metal-marlin quantize` (a thin caller
//! of [`run`]), for any program: a HF directory or GGUF file in, a
//! metal-marlin quantized model directory (docs/FORMAT.md) out.
//!
//! 1. Plan (plan.rs): every source tensor gets a target (rules.rs); every shape is
//!    checked against its format and the complete safetensors layout is
//!    computed, so bad input fails before anything is written.
//! 2. Write (write.rs) into `OUT.tmp-<pid>`: config, tokenizer files,
//!    `quantization_config.json`, then the tensors, streamed one block of
//!    rows at a time (source → f32 → target), so memory holds at most one
//!    block of one tensor, never the model.
//! 3. Re-open the result as a model, then rename it to `OUT` (replacing an
//!    existing `OUT` only with `--force`, and only now). Any failure removes
//!    the temporary directory.

pub mod expert_bits;
mod plan;
pub mod quantizer;
pub mod rotate;
pub mod rules;
mod write;

use plan::*;
use write::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mm_core::weight::MmFormat;
use mm_core::{Error, Result};
use mm_formats::{mm_format_label, open_source, SafetensorsPlan, WeightSource};
use mm_quant::mm::{QuantMethod, ScaleSearch};

pub use quantizer::{ExpertReport, Quantizer};
use rules::{Recipe, Rule, DEFAULT_GROUP};

/// Everything `quantize` is asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    pub src: PathBuf,
    pub out: PathBuf,
    /// Default format name (`int4`, …); None: the recipe's, else int4.
    pub format: Option<String>,
    /// None: the format's fixed group, else 128, with fallback.
    pub group_size: Option<u32>,
    pub recipe: Option<Recipe>,
    /// `REGEX=FORMAT` rules, in order.
    pub keep: Vec<String>,
    pub method: QuantMethod,
    pub calib: Option<PathBuf>,
    pub shard_bytes: u64,
    pub force: bool,
    /// Use a smaller group where the requested one does not divide a row.
    pub group_fallback: bool,
    /// GPTQ: quantize columns in order of decreasing Hessian diagonal, with
    /// static groups.
    pub act_order: bool,
    /// How group scales are chosen; `None`: [`scale_search_for`].
    pub scale_search: Option<ScaleSearch>,
    /// GPTQ: re-solve each row's scales for its codes against the Hessian.
    pub refit_scales: bool,
    /// GPTQ: error propagation strength in [0, 1] (0: off); `None`:
    /// [`DEFAULT_PROPAGATE_ERROR`] with GPTQ.
    pub propagate_error: Option<f64>,
    /// GPTQ error propagation: `o_proj` and `down_proj` also take up the
    /// residual stream's error (default on).
    pub propagate_residual: bool,
    /// GPTQ: block-wise tuning after each layer (`epochs` 0: off).
    pub tune: mm_engine::tune::TuneOptions,
    /// GPTQ: calibration windows taken from the text (at most).
    pub calib_windows: usize,
    /// GPTQ: a routed expert with fewer calibration tokens than this many
    /// times its input width has its Hessian blended with the layer-wide
    /// one (`mm_engine::calib::ExpertPolicy`).
    pub expert_min_tokens: f64,
    /// `--expert-bits auto`: each routed expert's format from measured
    /// sensitivity under a size target ([`expert_bits`]).
    pub expert_bits: Option<expert_bits::ExpertBits>,
    /// Rotate the model before quantizing (see [`rotate`]).
    pub rotate: bool,
    pub progress: bool,
}

impl Options {
    /// The error propagation strength in force: the asked one, else
    /// [`DEFAULT_PROPAGATE_ERROR`] with GPTQ; 0 with RTN.
    fn propagate_strength(&self) -> f64 {
        match self.method {
            QuantMethod::Gptq => self.propagate_error.unwrap_or(DEFAULT_PROPAGATE_ERROR),
            QuantMethod::Rtn => 0.0,
        }
    }
}

/// GPTQ's default error propagation strength (`--propagate-error`). Measured
/// on SmolLM2 with GPTQ act-order (docs/QUALITY.md, "Error propagation"):
/// 0.5 beat 0.25, 0.75 and 1 at 2, 3 and 4 bits (1 fits the calibration
/// windows' particular errors too closely).
pub const DEFAULT_PROPAGATE_ERROR: f64 = 0.5;

/// The scale rule for weights in `fmt`: the one asked for; else, for GPTQ
/// weights (`weighted`: the search weighs each column by its input energy)
/// at 4 bits or fewer, the error search, and min/max otherwise. Measured on
/// SmolLM2 (docs/QUALITY.md): with GPTQ the search lowers KLD by 24–39% at
/// 4 bits, 38–51% at 3 and 59–82% at 2; without activation weights (RTN)
/// it helps some formats and hurts others (int4-asym, nf4), so RTN keeps
/// min/max unless asked. At 8 bits there is nothing to gain.
pub fn scale_search_for(asked: Option<ScaleSearch>, fmt: MmFormat, weighted: bool) -> ScaleSearch {
    asked.unwrap_or(if weighted && fmt.bits() <= 4 {
        ScaleSearch::Mse
    } else {
        ScaleSearch::MinMax
    })
}

/// A finished run.
#[derive(Debug)]
pub struct Summary {
    pub out: PathBuf,
    /// Target label → number of tensors.
    pub by_target: BTreeMap<String, usize>,
    /// Tensors whose group size was lowered: (name, requested, used).
    pub fallbacks: Vec<(String, MmFormat, MmFormat)>,
    pub src_bytes: u64,
    pub out_bytes: u64,
    pub shards: usize,
    pub seconds: f64,
    /// GPTQ of a mixture-of-experts model: what happened to its routed
    /// experts.
    pub experts: Option<ExpertReport>,
    /// `--expert-bits auto`: the allocation, in one line.
    pub expert_bits: Option<String>,
}

/// Runs the whole pipeline.
pub fn run(o: &Options) -> Result<Summary> {
    let t0 = Instant::now();
    if o.method == QuantMethod::Gptq && o.calib.is_none() {
        return Err(Error::Invalid(
            "--method gptq needs calibration text: pass --calib FILE".into(),
        ));
    }
    if o.expert_bits.is_some() && o.calib.is_none() {
        return Err(Error::Invalid(
            "--expert-bits auto measures each expert on calibration text: pass --calib FILE".into(),
        ));
    }
    if o.method == QuantMethod::Rtn
        && ((o.calib.is_some() && o.expert_bits.is_none())
            || o.act_order
            || o.refit_scales
            || o.propagate_error.is_some()
            || o.tune.epochs > 0)
    {
        return Err(Error::Invalid(
            "--calib (except with --expert-bits auto), --act-order, --refit-scales, --propagate-error and --tune are only used by --method gptq"
                .into(),
        ));
    }
    let t = &o.tune;
    if !(t.lr.is_finite() && t.lr >= 0.0 && t.scale_lr.is_finite() && t.scale_lr >= 0.0) {
        return Err(Error::Invalid(format!(
            "--tune-lr {} and --tune-scale-lr {} must be finite and non-negative",
            t.lr, t.scale_lr
        )));
    }
    if o.calib_windows == 0 || (o.tune.epochs > 0 && o.calib_windows < 2) {
        return Err(Error::Invalid(format!(
            "--calib-windows {} is too few (at least 1, and 2 with --tune: one is held out)",
            o.calib_windows
        )));
    }
    if !(o.expert_min_tokens.is_finite() && o.expert_min_tokens >= 0.0) {
        return Err(Error::Invalid(format!(
            "--expert-min-tokens {} must be a finite number ≥ 0 (a multiple of each expert weight's input width; 0: every expert keeps its own Hessian)",
            o.expert_min_tokens
        )));
    }
    let propagate = o.propagate_strength();
    if !(0.0..=1.0).contains(&propagate) {
        return Err(Error::Invalid(format!(
            "--propagate-error {propagate} is outside [0, 1] (0 turns it off, 1 fits each layer fully to the unquantized model's output)"
        )));
    }
    if o.recipe.is_some() && (o.format.is_some() || o.group_size.is_some()) {
        return Err(Error::Invalid(
            "--recipe sets the formats itself: leave out --format and --group-size (use --keep to adjust it)".into(),
        ));
    }
    if o.shard_bytes == 0 {
        return Err(Error::Invalid("--shard-size must be positive".into()));
    }
    check_out(&o.src, &o.out, o.force)?;

    let src = open_source(&o.src)?;
    let src: Box<dyn WeightSource> = if o.rotate {
        Box::new(rotate::RotatedSource::new(src, rotate::DEFAULT_SEED)?)
    } else {
        src
    };
    let cfg = src.config().clone();
    let default = match (o.recipe, &o.format) {
        (Some(r), _) => r.default_format(),
        (None, name) => {
            let name = name.as_deref().unwrap_or("int4");
            let kind = mm_core::weight::MmKind::parse(name)?;
            let group = o
                .group_size
                .unwrap_or_else(|| kind.fixed_group().unwrap_or(DEFAULT_GROUP));
            MmFormat::new(kind, group)?
        }
    };
    // An explicit group (--group-size, or int8/g64 in a --keep rule) is a
    // promise about every row it applies to; otherwise (recipes, the
    // default group) the group is an upper bound. --group-fallback makes
    // every group an upper bound.
    let groups = GroupPolicy {
        fallback: o.group_fallback,
        default_explicit: o.recipe.is_none() && o.group_size.is_some(),
    };

    let mut rules: Vec<Rule> = match o.recipe {
        Some(r) => r.rules(cfg.num_layers),
        None if cfg.tie_word_embeddings => vec![rules::tied_embedding_rule()],
        None => vec![],
    };
    let n_recipe = rules.len();
    for k in &o.keep {
        rules.push(Rule::parse_keep(k, default.group)?);
    }
    let n_keep = rules.len();
    let gptq_opts = mm_quant::gptq::GptqOptions {
        act_order: o.act_order,
        static_groups: o.act_order,
        refit_scales: o.refit_scales,
        ..Default::default()
    };
    let expert_policy = mm_engine::calib::ExpertPolicy {
        min_tokens_per_input: o.expert_min_tokens,
    };
    let allocation = match &o.expert_bits {
        None => None,
        Some(ask) => {
            let bar = progress_bar(o.progress, 0);
            let a = expert_bits::allocate(
                ask,
                &expert_bits::Context {
                    src_path: &o.src,
                    src: src.as_ref(),
                    calib: o.calib.as_deref().unwrap_or(Path::new("")),
                    windows: o.calib_windows,
                    method: o.method,
                    gptq: gptq_opts,
                    scale_search: o.scale_search,
                    policy: expert_policy,
                    default_group: default.group,
                    lenient_groups: groups.fallback || !groups.default_explicit,
                    group_fallback: groups.fallback,
                },
                &|m| bar.set_message(m),
            )?;
            bar.finish_and_clear();
            rules.extend(a.rules.iter().cloned());
            Some(a)
        }
    };

    let (items, fallbacks, src_bytes) =
        plan_items(src.as_ref(), default, &rules, n_recipe, groups)?;
    if o.tune.epochs > 0 {
        if let Some(it) = items
            .iter()
            .find(|it| matches!(it.out, plan::Out::Quant(f) if f.kind.is_trellis()))
        {
            return Err(Error::Invalid(format!(
                "--tune does not apply to trellis formats ('{}'): their codes are searched, not rounded",
                it.name
            )));
        }
    }
    let mut qconfig = quant_config(&items, default, o, &rules[n_recipe..n_keep])?;
    if let (Some(a), Some(m)) = (&allocation, qconfig.as_object_mut()) {
        m.insert("expert_bits".into(), a.record.clone());
    }
    let (groups, n_quant) = tensor_groups(&items)?;
    if n_quant == 0 {
        tracing::warn!("no tensor is quantized: every weight was kept in a float dtype");
    }
    let plan = SafetensorsPlan::new(
        groups,
        o.shard_bytes,
        &[("format", "pt"), ("mm_format_version", "1")],
    )?;

    let quantizer = match o.method {
        QuantMethod::Rtn => Quantizer::Rtn,
        QuantMethod::Gptq => {
            let calib = o.calib.as_deref().unwrap_or(Path::new(""));
            let weights = items
                .iter()
                .filter_map(|i| match i.out {
                    Out::Quant(f) => Some((i.name.clone(), f)),
                    Out::Dense(_) => None,
                })
                .collect();
            Quantizer::gptq(
                &o.src,
                src.as_ref(),
                calib,
                weights,
                gptq_opts,
                o.scale_search,
                propagate,
                o.propagate_residual,
                o.tune,
                o.calib_windows,
                expert_policy,
            )?
        }
    };

    // Everything checked: write.
    let tmp = TempOut::create(&o.out)?;
    write_side_files(&o.src, src.as_ref(), tmp.path())?;
    let qc_path = tmp.path().join(mm_quant::mm::QUANT_CONFIG_FILE);
    std::fs::write(
        &qc_path,
        serde_json::to_string_pretty(&qconfig).map_err(json_err)? + "\n",
    )
    .map_err(|e| Error::io(&qc_path, e))?;
    let shards = plan.shards().len();
    let mut writer = plan.create(tmp.path())?;
    let total: u64 = items.iter().map(|i| numel(&i.shape) as u64).sum();
    let bar = progress_bar(o.progress, total);
    for it in &items {
        quantizer.prepare(&it.name, &|m| bar.set_message(m))?;
        bar.set_message(it.name.clone());
        write_item(
            src.as_ref(),
            it,
            &quantizer,
            o.scale_search,
            &mut writer,
            &bar,
        )?;
    }
    writer.finish()?;
    bar.finish_and_clear();

    verify(tmp.path(), &items)?;
    let out_bytes = dir_size(tmp.path())?;
    tmp.commit(&o.out, o.force)?;

    let mut by_target = BTreeMap::new();
    for it in &items {
        let label = match it.out {
            Out::Quant(f) => mm_format_label(f),
            Out::Dense(d) => d.to_string(),
        };
        *by_target.entry(label).or_insert(0) += 1;
    }
    Ok(Summary {
        out: o.out.clone(),
        by_target,
        fallbacks,
        src_bytes,
        out_bytes,
        shards,
        seconds: t0.elapsed().as_secs_f64(),
        experts: quantizer.expert_report(),
        expert_bits: allocation.map(|a| a.summary),
    })
}

pub(crate) fn json_err(e: serde_json::Error) -> Error {
    Error::Other(format!("JSON: {e}"))
}

pub(crate) fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn progress_bar(show: bool, total: u64) -> ProgressBar {
    let target = if show {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) = ProgressStyle::with_template(
        "quantizing [{bar:30}] {percent:>3}% {elapsed_precise} eta {eta} {wide_msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
