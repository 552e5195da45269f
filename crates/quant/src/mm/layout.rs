//! How a quantized weight maps to stored tensors: names, dtypes and shapes
//! of its parts (docs/FORMAT.md, "Tensors of a quantized weight").

use mm_core::weight::{MmFormat, MmScale};
use mm_core::{Error, HostBytes, Result, WeightData};

/// Shapes of the stored parts of a weight of logical shape `[.., rows, cols]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MmPartShapes {
    /// U8 `[.., rows, cols·bits/8]`.
    pub qweight: Vec<usize>,
    /// F16 (U8 E8M0 for MXFP4) `[.., rows, groups]`; trellis formats:
    /// F16 `[rows + cols]` (the output vector, then the input vector).
    pub scales: Vec<usize>,
    /// U8 `[.., rows, groups]`, asymmetric formats only.
    pub zeros: Option<Vec<usize>>,
}

/// safetensors dtype of a format's scales part.
pub fn scale_dtype(fmt: MmFormat) -> &'static str {
    match fmt.kind.scale() {
        MmScale::F16 => "F16",
        MmScale::E8M0 => "U8",
    }
}

/// Part shapes of a weight of logical `shape` (last dimension = rows'
/// length); errors when the row length does not suit the format.
pub fn mm_part_shapes(fmt: MmFormat, shape: &[usize]) -> Result<MmPartShapes> {
    let (&cols, lead) = shape
        .split_last()
        .ok_or_else(|| Error::Invalid("a quantized weight needs at least one dimension".into()))?;
    fmt.check_row_len(cols)?;
    if fmt.kind.is_trellis() {
        let &[rows] = lead else {
            return Err(Error::Invalid(format!(
                "{}: a weight of shape {shape:?} is not 2-D (trellis formats hold 2-D weights only)",
                fmt.name()
            )));
        };
        fmt.part_sizes(rows, cols)?;
        return Ok(MmPartShapes {
            qweight: vec![rows, fmt.code_bytes(cols)],
            scales: vec![rows + cols],
            zeros: None,
        });
    }
    let with_last = |n: usize| lead.iter().copied().chain([n]).collect::<Vec<_>>();
    let groups = fmt.groups_per_row(cols);
    Ok(MmPartShapes {
        qweight: with_last(fmt.code_bytes(cols)),
        scales: with_last(groups),
        zeros: fmt.kind.has_zeros().then(|| with_last(groups)),
    })
}

/// The base name under which a tensor's parts are stored: `P` for a tensor
/// named `P.weight` (parts `P.qweight`, `P.scales`, `P.zeros`, as GPTQ/AWQ
/// checkpoints name them), otherwise the tensor's full name.
pub fn mm_base_name(tensor: &str) -> &str {
    tensor.strip_suffix(".weight").unwrap_or(tensor)
}

/// Names of the `qweight`, `scales` and `zeros` tensors of `tensor`.
pub fn mm_part_names(tensor: &str) -> [String; 3] {
    let b = mm_base_name(tensor);
    [
        format!("{b}.qweight"),
        format!("{b}.scales"),
        format!("{b}.zeros"),
    ]
}

/// One stored part as read from a checkpoint.
#[derive(Clone, Debug)]
pub struct PartView<'a> {
    /// safetensors dtype string (`U8`, `F16`, …).
    pub dtype: &'a str,
    pub shape: &'a [usize],
    pub bytes: HostBytes,
}

/// Builds a weight from its stored parts, checking every dtype and shape
/// against the format; the logical shape is recovered from `qweight`'s.
pub fn mm_weight_from_parts(
    fmt: MmFormat,
    qweight: PartView<'_>,
    scales: PartView<'_>,
    zeros: Option<PartView<'_>>,
) -> Result<WeightData> {
    fmt.validate()?;
    let (&packed, lead) = qweight
        .shape
        .split_last()
        .ok_or_else(|| Error::Invalid(format!("{fmt}: qweight has no dimensions")))?;
    let cols = packed * 8 / fmt.bits() as usize;
    if cols * fmt.bits() as usize != packed * 8 {
        return Err(Error::Invalid(format!(
            "{fmt}: qweight rows of {packed} bytes do not hold whole {}-bit codes",
            fmt.bits()
        )));
    }
    let shape: Vec<usize> = lead.iter().copied().chain([cols]).collect();
    let want = mm_part_shapes(fmt, &shape)?;
    let check = |part: &str, v: &PartView<'_>, dtype: &str, s: &[usize]| {
        if v.dtype != dtype || v.shape != s {
            return Err(Error::Invalid(format!(
                "{fmt} weight of shape {shape:?}: {part} must be {dtype} {s:?}, found {} {:?}",
                v.dtype, v.shape
            )));
        }
        Ok(())
    };
    check("qweight", &qweight, "U8", &want.qweight)?;
    check("scales", &scales, scale_dtype(fmt), &want.scales)?;
    match (&zeros, &want.zeros) {
        (Some(z), Some(s)) => check("zeros", z, "U8", s)?,
        (None, None) => {}
        (None, Some(_)) => {
            return Err(Error::Invalid(format!(
                "{fmt} weight of shape {shape:?}: zeros tensor is missing"
            )))
        }
        (Some(_), None) => {
            return Err(Error::Invalid(format!(
                "{fmt} weight of shape {shape:?}: unexpected zeros tensor (symmetric format)"
            )))
        }
    }
    WeightData::new_mm(
        fmt,
        shape,
        qweight.bytes,
        scales.bytes,
        zeros.map(|z| z.bytes),
    )
}
