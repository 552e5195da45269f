//! Step 1 of [`crate::run`]: every source tensor's target (format or
//! dtype, group size after fallbacks), checked against its shape, and the
//! `quantization_config.json` and safetensors layout of the output, all
//! before anything is written.

use mm_core::weight::MmFormat;
use mm_core::{Error, Result, WeightFormat};
use mm_formats::writer::Dtype;
use mm_formats::{mm_format_label, TensorSpec, WeightSource};
use mm_quant::mm::{mm_part_names, mm_part_shapes, scale_dtype, QuantMethod, QuantizationConfig};
use serde_json::{json, Value};

use crate::rules::{self, Dense, Rule, Target};
use crate::{rotate, Options};

/// What one source tensor becomes.
#[derive(Clone, Debug)]
pub(crate) struct Item {
    pub(crate) name: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) src_format: WeightFormat,
    pub(crate) out: Out,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Out {
    Quant(MmFormat),
    Dense(Dtype),
}

/// Source dtype → the float dtype a kept tensor is written in.
pub(crate) fn dense_dtype(d: Dense, src: WeightFormat) -> Dtype {
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
pub(crate) struct GroupPolicy {
    /// --group-fallback: always.
    pub(crate) fallback: bool,
    /// The default format's group was given explicitly.
    pub(crate) default_explicit: bool,
}

type Planned = (Vec<Item>, Vec<(String, MmFormat, MmFormat)>, u64);

/// A target for every source tensor, checked against its shape.
pub(crate) fn plan_items(
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
                // Trellis tiles need the whole shape (2-D, 16-divisible).
                let fits = fmt
                    .check_row_len(cols)
                    .and_then(|()| match fmt.kind.is_trellis() {
                        true => mm_part_shapes(fmt, &w.shape).map(|_| ()),
                        false => Ok(()),
                    });
                match fits {
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
pub(crate) fn quant_config(
    items: &[Item],
    default: MmFormat,
    o: &Options,
    keep: &[Rule],
) -> Result<Value> {
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
pub(crate) fn tensor_groups(items: &[Item]) -> Result<(Vec<Vec<TensorSpec>>, usize)> {
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
