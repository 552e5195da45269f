//! The quantization pipeline behind `metal-marlin quantize` (a thin caller
//! of [`run`]), for any program: a HF directory or GGUF file in, a
//! metal-marlin quantized model directory (docs/FORMAT.md) out.
//!
//! 1. Plan: every source tensor gets a target (rules.rs); every shape is
//!    checked against its format and the complete safetensors layout is
//!    computed, so bad input fails before anything is written.
//! 2. Write into `OUT.tmp-<pid>`: config, tokenizer files,
//!    `quantization_config.json`, then the tensors, streamed one block of
//!    rows at a time (source → f32 → target), so memory holds at most one
//!    block of one tensor, never the model.
//! 3. Re-open the result as a model, then rename it to `OUT` (replacing an
//!    existing `OUT` only with `--force`, and only now). Any failure removes
//!    the temporary directory.

pub mod expert_bits;
pub mod quantizer;
pub mod rotate;
pub mod rules;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use half::{bf16, f16};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mm_core::weight::MmFormat;
use mm_core::{Error, Result, WeightData, WeightFormat};
use mm_formats::writer::Dtype;
use mm_formats::{mm_format_label, open_source, SafetensorsPlan, TensorSpec, WeightSource};
use mm_quant::mm::{
    mm_part_names, mm_part_shapes, quantize_rtn_with, scale_dtype, QuantMethod, QuantizationConfig,
    QuantizedTensor, ScaleSearch,
};
use rayon::prelude::*;
use serde_json::{json, Value};

pub use quantizer::{ExpertReport, Quantizer};
use rules::{Dense, Recipe, Rule, Target, DEFAULT_GROUP};

/// Elements per block of rows processed at once.
const BLOCK_ELEMS: usize = 1 << 23;
/// Tokenizer and generation files copied from an HF source.
const HF_SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
];

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

/// What one source tensor becomes.
#[derive(Clone, Debug)]
struct Item {
    name: String,
    shape: Vec<usize>,
    src_format: WeightFormat,
    out: Out,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Out {
    Quant(MmFormat),
    Dense(Dtype),
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

fn json_err(e: serde_json::Error) -> Error {
    Error::Other(format!("JSON: {e}"))
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// `OUT` must not exist (unless `force`), and must not be, or contain, the
/// source.
fn check_out(src: &Path, out: &Path, force: bool) -> Result<()> {
    if out.as_os_str().is_empty() {
        return Err(Error::Invalid("-o: the output path is empty".into()));
    }
    let exists = std::fs::symlink_metadata(out).is_ok();
    if exists && !force {
        return Err(Error::Invalid(format!(
            "output {} already exists; choose another -o, or pass --force to replace it (only once the new model is complete)",
            out.display()
        )));
    }
    let src_abs = std::fs::canonicalize(src).map_err(|e| Error::io(src, e))?;
    if exists {
        let out_abs = std::fs::canonicalize(out).map_err(|e| Error::io(out, e))?;
        if src_abs.starts_with(&out_abs) {
            return Err(Error::Invalid(format!(
                "output {} is (or contains) the source {}; --force would delete it",
                out.display(),
                src.display()
            )));
        }
    }
    Ok(())
}

/// Source dtype → the float dtype a kept tensor is written in.
fn dense_dtype(d: Dense, src: WeightFormat) -> Dtype {
    match d {
        Dense::F32 => Dtype::F32,
        Dense::F16 => Dtype::F16,
        Dense::BF16 => Dtype::BF16,
        Dense::Source => match src {
            WeightFormat::F32 => Dtype::F32,
            WeightFormat::BF16 => Dtype::BF16,
            _ => Dtype::F16,
        },
    }
}

/// The largest supported group not above `fmt.group` that suits rows of
/// `cols` (per-channel as the last resort).
pub(crate) fn fallback_group(fmt: MmFormat, cols: usize) -> Option<MmFormat> {
    if fmt.kind.fixed_group().is_some() {
        return None;
    }
    [64u32, 32, 0]
        .into_iter()
        .filter(|&g| g < fmt.group)
        .map(|group| MmFormat {
            kind: fmt.kind,
            group,
        })
        .find(|f| f.check_row_len(cols).is_ok())
}

/// When a group that does not divide a tensor's rows may be lowered.
#[derive(Clone, Copy, Debug)]
struct GroupPolicy {
    /// --group-fallback: always.
    fallback: bool,
    /// The default format's group was given explicitly.
    default_explicit: bool,
}

type Planned = (Vec<Item>, Vec<(String, MmFormat, MmFormat)>, u64);

/// A target for every source tensor, checked against its shape.
fn plan_items(
    src: &dyn WeightSource,
    default: MmFormat,
    rules: &[Rule],
    n_recipe: usize,
    groups: GroupPolicy,
) -> Result<Planned> {
    let from_gguf = src.gguf().is_some();
    let mut hits = vec![0usize; rules.len()];
    let mut items = Vec::new();
    let mut fallbacks = Vec::new();
    let mut src_bytes = 0u64;
    for (name, _, _) in src.describe() {
        // GGUF per-frequency RoPE factors travel in config.json.
        if from_gguf && name == "rope_freqs.weight" {
            continue;
        }
        let w = src.tensor(&name)?;
        src_bytes += w.stored_bytes() as u64;
        let (target, applied) = rules::resolve(&name, &w.shape, default, rules);
        let explicit = match applied.last() {
            Some(&i) => rules[i].explicit_group,
            None => groups.default_explicit,
        };
        let lenient = groups.fallback || !explicit;
        for i in applied {
            hits[i] += 1;
        }
        let out = match target {
            Target::Dense(d) => Out::Dense(dense_dtype(d, w.format)),
            Target::Quant(fmt) => {
                let cols = *w.shape.last().unwrap_or(&0);
                match fmt.check_row_len(cols) {
                    Ok(()) => Out::Quant(fmt),
                    Err(e) => match fallback_group(fmt, cols).filter(|_| lenient) {
                        Some(f) => {
                            fallbacks.push((name.clone(), fmt, f));
                            Out::Quant(f)
                        }
                        None => {
                            let hint = match fallback_group(fmt, cols) {
                                Some(f) => format!(
                                    "; use a group that divides {cols} (--group-size {g}, or FORMAT/g{g} in a --keep rule), \
                                     --group-fallback, or --keep '{name}'=FORMAT",
                                    g = f.group
                                ),
                                None => format!("; choose another format with --keep '{name}'=FORMAT"),
                            };
                            let e = match e {
                                Error::Invalid(m) => m,
                                e => e.to_string(),
                            };
                            return Err(Error::Invalid(format!(
                                "tensor '{name}' of shape {:?} cannot be stored as {}: {e}{hint}",
                                w.shape,
                                mm_format_label(fmt)
                            )));
                        }
                    },
                }
            }
        };
        items.push(Item {
            name,
            shape: w.shape.clone(),
            src_format: w.format,
            out,
        });
    }
    if items.is_empty() {
        return Err(Error::Invalid("the source holds no tensors".into()));
    }
    for (i, r) in rules.iter().enumerate().skip(n_recipe) {
        if hits[i] == 0 {
            return Err(Error::Invalid(format!(
                "--keep '{}' matches no tensor (tensor names look like 'model.layers.0.mlp.down_proj.weight'; \
                 1-D tensors such as norms are never quantized)",
                r.source
            )));
        }
    }
    // Embeddings first, layers in numeric order, the rest after.
    items.sort_by_key(|it| {
        let layer = it
            .name
            .strip_prefix("model.layers.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse::<usize>().ok());
        let class = match layer {
            Some(_) => 1,
            None if it.name.contains("embed") => 0,
            None => 2,
        };
        (class, layer.unwrap_or(0), it.name.clone())
    });
    Ok((items, fallbacks, src_bytes))
}

/// `quantization_config.json`: the default format, every quantized weight
/// in another format as an exact-name override, every 2-D tensor kept in a
/// float dtype in `unquantized`; plus the informational `recipe` and
/// `keep` (the rules as given).
fn quant_config(items: &[Item], default: MmFormat, o: &Options, keep: &[Rule]) -> Result<Value> {
    let method = o.method;
    let mut c = QuantizationConfig::new(default, method)?;
    for it in items {
        match it.out {
            Out::Quant(f) if f != default => c = c.with_override(&it.name, f)?,
            Out::Dense(_) if it.shape.len() >= 2 => c = c.with_unquantized(&it.name)?,
            _ => {}
        }
    }
    // The loader must read back exactly what is written.
    for it in items.iter().filter(|i| i.shape.len() >= 2) {
        let want = match it.out {
            Out::Quant(f) => mm_quant::mm::TensorQuant::Quantized(f),
            Out::Dense(_) => mm_quant::mm::TensorQuant::Unquantized,
        };
        let got = c.tensor_quant(&it.name)?;
        if got != want {
            return Err(Error::Other(format!(
                "internal: quantization_config.json would resolve '{}' to {got:?}, not {want:?}",
                it.name
            )));
        }
    }
    let mut v = c.to_value();
    if let Some(m) = v.as_object_mut() {
        m.insert("recipe".into(), json!(o.recipe.map(|r| r.name())));
        // For information, as "method": `auto` is resolved per tensor by
        // [`scale_search_for`].
        m.insert(
            "scale_search".into(),
            json!(o.scale_search.map_or("auto", |s| s.name())),
        );
        if o.refit_scales {
            m.insert("refit_scales".into(), json!(true));
        }
        if o.method == QuantMethod::Gptq {
            let a = o.propagate_strength();
            m.insert("propagate_error".into(), json!(a));
            m.insert(
                "propagate_residual".into(),
                json!(a > 0.0 && o.propagate_residual),
            );
            m.insert("calib_windows".into(), json!(o.calib_windows));
            if o.tune.epochs > 0 {
                m.insert(
                    "tune".into(),
                    json!({"epochs": o.tune.epochs, "lr": o.tune.lr, "scale_lr": o.tune.scale_lr}),
                );
            }
        }
        m.insert(
            "keep".into(),
            json!(keep.iter().map(|r| r.source.clone()).collect::<Vec<_>>()),
        );
        if o.rotate {
            m.insert(
                "rotation".into(),
                json!({"kind": "residual+values", "seed": rotate::DEFAULT_SEED}),
            );
        }
        m.insert(
            "quantized_by".into(),
            json!(format!("metal-marlin {}", env!("CARGO_PKG_VERSION"))),
        );
    }
    Ok(v)
}

/// The stored tensors of each item (a quantized weight's parts together).
fn tensor_groups(items: &[Item]) -> Result<(Vec<Vec<TensorSpec>>, usize)> {
    let mut groups = Vec::with_capacity(items.len());
    let mut n_quant = 0;
    for it in items {
        match it.out {
            Out::Dense(d) => groups.push(vec![TensorSpec::new(&it.name, d, it.shape.clone())]),
            Out::Quant(f) => {
                n_quant += 1;
                let shapes = mm_part_shapes(f, &it.shape)
                    .map_err(|e| Error::Invalid(format!("tensor '{}': {e}", it.name)))?;
                let [qw, sc, ze] = mm_part_names(&it.name);
                let sd = if scale_dtype(f) == "F16" {
                    Dtype::F16
                } else {
                    Dtype::U8
                };
                let mut g = vec![
                    TensorSpec::new(qw, Dtype::U8, shapes.qweight),
                    TensorSpec::new(sc, sd, shapes.scales),
                ];
                if let Some(z) = shapes.zeros {
                    g.push(TensorSpec::new(ze, Dtype::U8, z));
                }
                groups.push(g);
            }
        }
    }
    Ok((groups, n_quant))
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

/// Rows `r0..r1` of `w` as f32, dequantized in parallel.
fn rows_f32(w: &WeightData, r0: usize, r1: usize, cols: usize) -> Result<Vec<f32>> {
    const SUB: usize = 16;
    let mut out = vec![0f32; (r1 - r0) * cols];
    out.par_chunks_mut(SUB * cols.max(1))
        .enumerate()
        .try_for_each(|(i, chunk)| {
            let a = r0 + i * SUB;
            let b = a + chunk.len() / cols.max(1);
            chunk.copy_from_slice(&mm_quant::dequantize_rows_ref(w, a..b)?);
            Ok::<_, Error>(())
        })?;
    Ok(out)
}

/// f32 values as little-endian `dtype` bytes; F16 overflow is an error.
fn encode_dense(name: &str, v: &[f32], dtype: Dtype) -> Result<Vec<u8>> {
    match dtype {
        Dtype::F32 => Ok(bytemuck::cast_slice(v).to_vec()),
        Dtype::BF16 => Ok(v
            .iter()
            .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
            .collect()),
        Dtype::F16 => {
            let mut out = Vec::with_capacity(v.len() * 2);
            for x in v {
                let h = f16::from_f32(*x);
                if h.is_infinite() && x.is_finite() {
                    return Err(Error::Invalid(format!(
                        "tensor '{name}': the value {x} is beyond the F16 range; keep it as bf16 or f32 (--keep '{name}'=bf16)"
                    )));
                }
                out.extend_from_slice(&h.to_le_bytes());
            }
            Ok(out)
        }
        d => Err(Error::Other(format!(
            "internal: {d} is not a dense output dtype"
        ))),
    }
}

fn same_dtype(src: WeightFormat, d: Dtype) -> bool {
    matches!(
        (src, d),
        (WeightFormat::F32, Dtype::F32)
            | (WeightFormat::F16, Dtype::F16)
            | (WeightFormat::BF16, Dtype::BF16)
    )
}

/// Streams one tensor into the writer, a block of rows at a time.
fn write_item(
    src: &dyn WeightSource,
    it: &Item,
    q: &Quantizer,
    scale_search: Option<ScaleSearch>,
    out: &mut mm_formats::SafetensorsWriter,
    bar: &ProgressBar,
) -> Result<()> {
    let cols = (*it.shape.last().unwrap_or(&1)).max(1);
    let rows = numel(&it.shape) / cols;
    let in_tensor = |e: Error| match e {
        Error::Invalid(m) | Error::Other(m) if !m.contains(&it.name) => {
            Error::Invalid(format!("tensor '{}': {m}", it.name))
        }
        e => e,
    };
    let put = |out: &mut mm_formats::SafetensorsWriter, t: &QuantizedTensor| -> Result<()> {
        let [qw, sc, ze] = mm_part_names(&it.name);
        out.write(&qw, &t.qweight)?;
        out.write(&sc, &t.scales)?;
        if let Some(z) = &t.zeros {
            out.write(&ze, z)?;
        }
        Ok(())
    };
    if let Out::Quant(f) = it.out {
        if let Some(t) = q.take(&it.name, rows, cols, f).map_err(in_tensor)? {
            put(out, &t)?;
            bar.inc(numel(&it.shape) as u64);
            return Ok(());
        }
    }
    let w = src.tensor(&it.name)?;
    if w.shape != it.shape || w.format != it.src_format {
        return Err(Error::Other(format!(
            "tensor '{}' changed while being quantized",
            it.name
        )));
    }
    let block = (BLOCK_ELEMS / cols).max(1);
    match it.out {
        Out::Dense(d) if same_dtype(w.format, d) => {
            let bytes: &[u8] = &w.bytes;
            for chunk in bytes.chunks(BLOCK_ELEMS * 2) {
                out.write(&it.name, chunk)?;
            }
            bar.inc(numel(&it.shape) as u64);
        }
        Out::Dense(d) => {
            let mut r0 = 0;
            while r0 < rows {
                let r1 = (r0 + block).min(rows);
                let v = rows_f32(&w, r0, r1, cols).map_err(in_tensor)?;
                out.write(&it.name, &encode_dense(&it.name, &v, d)?)?;
                bar.inc(((r1 - r0) * cols) as u64);
                r0 = r1;
            }
        }
        Out::Quant(f) => {
            let mut r0 = 0;
            while r0 < rows {
                let r1 = (r0 + block).min(rows);
                let v = rows_f32(&w, r0, r1, cols).map_err(in_tensor)?;
                let search = scale_search_for(scale_search, f, false);
                let t = quantize_rtn_with(&v, r1 - r0, cols, f, search).map_err(in_tensor)?;
                put(out, &t)?;
                bar.inc(((r1 - r0) * cols) as u64);
                r0 = r1;
            }
        }
    }
    Ok(())
}

/// config.json and the tokenizer/generation files.
fn write_side_files(src_path: &Path, src: &dyn WeightSource, dir: &Path) -> Result<()> {
    let write = |name: &str, v: &Value| -> Result<()> {
        let p = dir.join(name);
        let text = serde_json::to_string_pretty(v).map_err(json_err)?;
        std::fs::write(&p, text + "\n").map_err(|e| Error::io(&p, e))
    };
    if src.gguf().is_some() {
        write("config.json", &src.config().to_hf_json())?;
        let tok = mm_engine::tokenizer::load_for(src_path, src)
            .map_err(|e| Error::Other(format!("exporting the GGUF tokenizer: {e}")))?;
        let p = dir.join("tokenizer.json");
        tok.inner()
            .save(&p, false)
            .map_err(|e| Error::Other(format!("{}: writing the tokenizer: {e}", p.display())))?;
        let mut tc = serde_json::Map::new();
        tc.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
        tc.insert(
            "model_max_length".into(),
            json!(src.config().max_position_embeddings),
        );
        if let Some(b) = tok.bos_token() {
            tc.insert("bos_token".into(), json!(b));
        }
        if let Some(e) = tok.eos_token() {
            tc.insert("eos_token".into(), json!(e));
        }
        tc.insert("add_bos_token".into(), json!(tok.add_bos()));
        if let Some(t) = tok.chat_template() {
            tc.insert("chat_template".into(), json!(t));
        }
        write("tokenizer_config.json", &Value::Object(tc))?;
        let mut gc = serde_json::Map::new();
        if let Some(b) = tok.bos_id() {
            gc.insert("bos_token_id".into(), json!(b));
        }
        match tok.eos_ids() {
            [] => {}
            [one] => {
                gc.insert("eos_token_id".into(), json!(one));
            }
            many => {
                gc.insert("eos_token_id".into(), json!(many));
            }
        }
        write("generation_config.json", &Value::Object(gc))?;
    } else {
        let copy = |name: &str| -> Result<bool> {
            let from = src_path.join(name);
            if !from.is_file() {
                return Ok(false);
            }
            let to = dir.join(name);
            std::fs::copy(&from, &to).map_err(|e| Error::io(&from, e))?;
            Ok(true)
        };
        if !copy("config.json")? {
            return Err(Error::io(
                src_path.join("config.json"),
                std::io::Error::new(std::io::ErrorKind::NotFound, "missing"),
            ));
        }
        if !src.config().tie_word_embeddings {
            untie_config(&dir.join("config.json"))?;
        }
        let mut has_tok = false;
        for f in HF_SIDE_FILES {
            has_tok |= copy(f)? && *f == "tokenizer.json";
        }
        if !has_tok {
            tracing::warn!(
                "{} has no tokenizer.json: the quantized model will have none either",
                src_path.display()
            );
        }
    }
    Ok(())
}

/// Sets `tie_word_embeddings` to false in a copied config.json where it is
/// true (a rotated model has its own LM head).
fn untie_config(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    let tied = v.get("tie_word_embeddings").and_then(Value::as_bool);
    if let (Some(true), Some(m)) = (tied, v.as_object_mut()) {
        m.insert("tie_word_embeddings".into(), json!(false));
        let text = serde_json::to_string_pretty(&v).map_err(json_err)?;
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// Re-opens the written directory as a model and checks every planned
/// tensor reads back with its planned format and shape.
fn verify(dir: &Path, items: &[Item]) -> Result<()> {
    let fail = |m: String| Error::Other(format!("the written model does not read back: {m}"));
    let src = open_source(dir).map_err(|e| fail(e.to_string()))?;
    for it in items {
        let w = src.tensor(&it.name).map_err(|e| fail(e.to_string()))?;
        let ok = match it.out {
            Out::Quant(f) => w.format == WeightFormat::Mm(f),
            Out::Dense(d) => same_dtype(w.format, d),
        };
        if !ok || w.shape != it.shape {
            return Err(fail(format!(
                "'{}' reads back as {} {:?}",
                it.name,
                w.format.name(),
                w.shape
            )));
        }
    }
    Ok(())
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        n += e.metadata().map_err(|x| Error::io(e.path(), x))?.len();
    }
    Ok(n)
}

/// The output being written, `OUT.tmp-<pid>`; removed on drop unless
/// committed.
struct TempOut {
    path: PathBuf,
    committed: bool,
}

fn sibling(out: &Path, tag: &str) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{tag}-{}", std::process::id()));
    out.with_file_name(name)
}

impl TempOut {
    fn create(out: &Path) -> Result<Self> {
        if out.file_name().is_none() {
            return Err(Error::Invalid(format!(
                "-o {}: the output must name a directory to create",
                out.display()
            )));
        }
        let path = sibling(out, "tmp");
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Self {
            path,
            committed: false,
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the finished directory to `out`, replacing an existing `out`
    /// when `force` (moved aside first, removed after).
    fn commit(mut self, out: &Path, force: bool) -> Result<()> {
        let exists = std::fs::symlink_metadata(out).is_ok();
        if exists && !force {
            return Err(Error::Invalid(format!(
                "output {} appeared while quantizing; not replacing it (pass --force to)",
                out.display()
            )));
        }
        let old = sibling(out, "old");
        if exists {
            std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
        }
        if let Err(e) = std::fs::rename(&self.path, out) {
            if exists {
                let _ = std::fs::rename(&old, out);
            }
            return Err(Error::io(out, e));
        }
        self.committed = true;
        if exists {
            let r = if old.is_dir() {
                std::fs::remove_dir_all(&old)
            } else {
                std::fs::remove_file(&old)
            };
            if let Err(e) = r {
                tracing::warn!("could not remove the replaced {}: {e}", old.display());
            }
        }
        Ok(())
    }
}

impl Drop for TempOut {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
