//! Round-to-nearest (RTN) reference quantizers of the metal-marlin formats.

use half::f16;
use mm_core::weight::{MmFormat, MmKind, MmPartSizes};
use mm_core::{Error, HostBytes, Result, WeightData};
use rayon::prelude::*;

use super::codec::{
    f16_scale_up, f32_to_e2m1, f32_to_e4m3, f32_to_e5m2, mx_unscale, mxfp4_scale_exponent,
    round_even, E2M1_MAX, E4M3_MAX, E5M2_MAX, NF4_MIDPOINTS,
};
use super::dequantize::dequantize_mm;
use super::layout::{mm_part_shapes, MmPartShapes};
use super::pack::pack_unchecked;
use super::search::ScaleSearch;

/// A weight quantized into a metal-marlin format: its three parts exactly as
/// they are stored on disk (docs/FORMAT.md).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedTensor {
    pub format: MmFormat,
    pub rows: usize,
    pub cols: usize,
    /// Packed codes, `rows × cols·bits/8` bytes, row-major.
    pub qweight: Vec<u8>,
    /// Group scales, `rows × groups` F16 little-endian (E8M0 bytes for MXFP4).
    pub scales: Vec<u8>,
    /// Group zero-points, `rows × groups` bytes, asymmetric formats only.
    pub zeros: Option<Vec<u8>>,
}

/// One stored part of a quantized weight, ready for a safetensors writer.
#[derive(Clone, Debug, PartialEq)]
pub struct MmPart<'a> {
    /// `qweight`, `scales` or `zeros`: the tensor is stored as `{base}.{suffix}`.
    pub suffix: &'static str,
    /// safetensors dtype: `U8` or `F16`.
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

impl QuantizedTensor {
    /// The values the stored weight decodes to, row-major.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        dequantize_mm(
            self.format,
            self.rows,
            self.cols,
            &self.qweight,
            &self.scales,
            self.zeros.as_deref(),
        )
    }

    /// The scale of group `g` of row `r`, as f32.
    pub fn scale(&self, r: usize, g: usize) -> f32 {
        let i = r * self.format.groups_per_row(self.cols) + g;
        super::dequantize::read_scale(self.format, &self.scales, i)
    }

    /// The parts with their safetensors dtypes and shapes (`[rows, …]`).
    pub fn parts(&self) -> Result<Vec<MmPart<'_>>> {
        let MmPartShapes {
            qweight,
            scales,
            zeros,
        } = mm_part_shapes(self.format, &[self.rows, self.cols])?;
        let mut v = vec![
            MmPart {
                suffix: "qweight",
                dtype: "U8",
                shape: qweight,
                data: &self.qweight,
            },
            MmPart {
                suffix: "scales",
                dtype: super::layout::scale_dtype(self.format),
                shape: scales,
                data: &self.scales,
            },
        ];
        if let (Some(shape), Some(z)) = (zeros, &self.zeros) {
            v.push(MmPart {
                suffix: "zeros",
                dtype: "U8",
                shape,
                data: z,
            });
        }
        Ok(v)
    }

    /// The weight as a [`WeightData`] of shape `[rows, cols]`.
    pub fn into_weight_data(self) -> Result<WeightData> {
        WeightData::new_mm(
            self.format,
            vec![self.rows, self.cols],
            HostBytes::owned(self.qweight),
            HostBytes::owned(self.scales),
            self.zeros.map(HostBytes::owned),
        )
    }
}

/// Seed of the sign vectors of trellis weights quantized without a Hessian.
pub const TRELLIS_SEED: u64 = 0x7E11_15EE;

/// Quantizes a row-major `[rows, cols]` f32 matrix with round-to-nearest,
/// rows in parallel. Errors on a row length the format cannot hold, on a
/// non-finite value, and on a group whose scale does not fit an F16.
pub fn quantize_rtn(
    values: &[f32],
    rows: usize,
    cols: usize,
    fmt: MmFormat,
) -> Result<QuantizedTensor> {
    if let MmKind::Trellis(k) = fmt.kind {
        let q =
            crate::trellis::quantize::quantize_trellis(values, rows, cols, k as u32, TRELLIS_SEED)?;
        return Ok(q.into_quantized(fmt));
    }
    let sizes = checked_sizes(values, rows, cols, fmt)?;
    let mut qweight = vec![0u8; sizes.codes];
    let mut scales = vec![0u8; sizes.scales];
    let cb = fmt.code_bytes(cols);
    let sb = fmt.groups_per_row(cols) * fmt.scale_bytes();
    let min_len = (1 << 14) / cols + 1;
    let in_row = |r: usize, e: String| Error::Invalid(format!("quantize {fmt}: row {r}: {e}"));
    let zeros = if fmt.kind.has_zeros() {
        let zb = fmt.groups_per_row(cols);
        let mut zeros = vec![0u8; sizes.zeros];
        qweight
            .par_chunks_mut(cb)
            .zip(scales.par_chunks_mut(sb))
            .zip(zeros.par_chunks_mut(zb))
            .zip(values.par_chunks(cols))
            .enumerate()
            .with_min_len(min_len)
            .try_for_each_init(
                || vec![0u8; cols],
                |scratch, (r, (((c, s), z), x))| {
                    quantize_row(fmt, x, c, s, Some(z), scratch).map_err(|e| in_row(r, e))
                },
            )?;
        Some(zeros)
    } else {
        qweight
            .par_chunks_mut(cb)
            .zip(scales.par_chunks_mut(sb))
            .zip(values.par_chunks(cols))
            .enumerate()
            .with_min_len(min_len)
            .try_for_each_init(
                || vec![0u8; cols],
                |scratch, (r, ((c, s), x))| {
                    quantize_row(fmt, x, c, s, None, scratch).map_err(|e| in_row(r, e))
                },
            )?;
        None
    };
    Ok(QuantizedTensor {
        format: fmt,
        rows,
        cols,
        qweight,
        scales,
        zeros,
    })
}

/// The part sizes of a `rows × cols` weight in `fmt`, after checking that
/// `values` holds exactly its elements.
fn checked_sizes(values: &[f32], rows: usize, cols: usize, fmt: MmFormat) -> Result<MmPartSizes> {
    let sizes = fmt.part_sizes(rows, cols)?;
    let n = rows
        .checked_mul(cols)
        .ok_or_else(|| Error::Invalid(format!("{rows}x{cols} overflows")))?;
    if values.len() != n {
        return Err(Error::Invalid(format!(
            "quantize {fmt}: {rows}x{cols} matrix needs {n} values, found {}",
            values.len()
        )));
    }
    Ok(sizes)
}

/// [`quantize_rtn`] with each group's parameters chosen by `search`
/// (`ScaleSearch::MinMax` is exactly [`quantize_rtn`]); codes are then the
/// nearest under those parameters. Rows in parallel; the same errors.
pub fn quantize_rtn_with(
    values: &[f32],
    rows: usize,
    cols: usize,
    fmt: MmFormat,
    search: ScaleSearch,
) -> Result<QuantizedTensor> {
    if search == ScaleSearch::MinMax || fmt.kind.is_trellis() {
        return quantize_rtn(values, rows, cols, fmt);
    }
    let sizes = checked_sizes(values, rows, cols, fmt)?;
    let (gl, groups, sb) = (
        fmt.group_len(cols),
        fmt.groups_per_row(cols),
        fmt.scale_bytes(),
    );
    let mut qweight = vec![0u8; sizes.codes];
    let mut scales = vec![0u8; sizes.scales];
    let mut zeros = vec![0u8; rows * groups];
    qweight
        .par_chunks_mut(fmt.code_bytes(cols))
        .zip(scales.par_chunks_mut(groups * sb))
        .zip(zeros.par_chunks_mut(groups))
        .zip(values.par_chunks(cols))
        .enumerate()
        .try_for_each_init(
            || vec![0u8; cols],
            |codes, (r, (((c, s), z), row))| {
                for (g, x) in row.chunks_exact(gl).enumerate() {
                    let q = search.fit(fmt.kind, x, None).map_err(|e| {
                        Error::Invalid(format!("quantize {fmt}: row {r}, group {g}: {e}"))
                    })?;
                    for (code, &v) in codes[g * gl..(g + 1) * gl].iter_mut().zip(x) {
                        *code = q.encode(v);
                    }
                    q.write_scale(&mut s[g * sb..(g + 1) * sb]);
                    z[g] = q.zero();
                }
                pack_unchecked(fmt.bits(), codes, c);
                Ok::<(), Error>(())
            },
        )?;
    Ok(QuantizedTensor {
        format: fmt,
        rows,
        cols,
        qweight,
        scales,
        zeros: fmt.kind.has_zeros().then_some(zeros),
    })
}

/// Quantizes one row with round-to-nearest into its stored parts: `codes`
/// (`cols·bits/8` bytes), `scales` (`groups × 1 or 2` bytes) and, for
/// asymmetric formats, `zeros` (`groups` bytes).
pub fn quantize_mm_row(
    fmt: MmFormat,
    row: &[f32],
    codes: &mut [u8],
    scales: &mut [u8],
    zeros: Option<&mut [u8]>,
) -> Result<()> {
    let cols = row.len();
    super::dequantize::check_row_parts(
        fmt,
        cols,
        codes.len(),
        scales.len(),
        zeros.as_ref().map(|z| z.len()),
    )?;
    let mut scratch = vec![0u8; cols];
    quantize_row(fmt, row, codes, scales, zeros, &mut scratch)
        .map_err(|e| Error::Invalid(format!("quantize {fmt}: {e}")))
}

fn quantize_row(
    fmt: MmFormat,
    row: &[f32],
    codes: &mut [u8],
    scales: &mut [u8],
    mut zeros: Option<&mut [u8]>,
    scratch: &mut [u8],
) -> std::result::Result<(), String> {
    if let Some(i) = row.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "column {i}: cannot quantize the non-finite value {}",
            row[i]
        ));
    }
    let gl = fmt.group_len(row.len());
    let sb = fmt.scale_bytes();
    for (g, (x, q)) in row
        .chunks_exact(gl)
        .zip(scratch.chunks_exact_mut(gl))
        .enumerate()
    {
        let s = &mut scales[g * sb..(g + 1) * sb];
        let zero = quantize_group(fmt.kind, x, q, s)
            .map_err(|e| format!("group {g} (columns {}..{}): {e}", g * gl, (g + 1) * gl))?;
        if let Some(z) = zeros.as_deref_mut() {
            z[g] = zero;
        }
    }
    pack_unchecked(fmt.bits(), scratch, codes);
    Ok(())
}

/// Codes `enc(x / s)` of a group; all zero codes for a zero scale.
#[inline]
fn encode_all(q: &mut [u8], x: &[f32], s: f32, enc: impl Fn(f32) -> u8) {
    if s == 0.0 {
        q.fill(0);
    } else {
        for (c, &v) in q.iter_mut().zip(x) {
            *c = enc(v / s);
        }
    }
}

fn absmax(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// A group's F16 scale for `num / den`, rounded up; writes it to `out`.
fn f16_scale(num: f32, den: f32, out: &mut [u8]) -> std::result::Result<f32, String> {
    if num == 0.0 {
        out.copy_from_slice(&f16::ZERO.to_le_bytes());
        return Ok(0.0);
    }
    let s = f16_scale_up(num / den).ok_or_else(|| {
        format!(
            "range {num} needs a scale of {}, beyond the largest F16 (65504)",
            num / den
        )
    })?;
    out.copy_from_slice(&s.to_le_bytes());
    Ok(s.to_f32())
}

/// Quantizes one group into unpacked codes `q`, writes its scale bytes to
/// `scale`, returns its zero-point (0 for formats without one).
fn quantize_group(
    kind: MmKind,
    x: &[f32],
    q: &mut [u8],
    scale: &mut [u8],
) -> std::result::Result<u8, String> {
    match kind {
        MmKind::Trellis(_) => Err(format!(
            "{} is searched tile by tile, not by groups",
            kind.name()
        )),
        MmKind::IntSym(b) => {
            let off = 1i32 << (b - 1);
            let qmax = off - 1;
            let s = f16_scale(absmax(x), qmax as f32, scale)?;
            if s == 0.0 {
                q.fill(off as u8);
            } else {
                let lim = qmax as f32;
                for (c, &v) in q.iter_mut().zip(x) {
                    *c = (round_even(v / s).clamp(-lim, lim) as i32 + off) as u8;
                }
            }
            Ok(0)
        }
        MmKind::IntAsym(b) => {
            let qmax = ((1u32 << b) - 1) as f32;
            let (mn, mx) = x
                .iter()
                .fold((0f32, 0f32), |(mn, mx), &v| (mn.min(v), mx.max(v)));
            let s = f16_scale(mx - mn, qmax, scale)?;
            if s == 0.0 {
                q.fill(0);
                return Ok(0);
            }
            let z = round_even(-mn / s).clamp(0.0, qmax);
            for (c, &v) in q.iter_mut().zip(x) {
                *c = (round_even(v / s) + z).clamp(0.0, qmax) as u8;
            }
            Ok(z as u8)
        }
        MmKind::Nf4 => {
            let s = f16_scale(absmax(x), 1.0, scale)?;
            if s == 0.0 {
                q.fill(7);
            } else {
                let t: &[f32; 15] = &NF4_MIDPOINTS;
                encode_all(q, x, s, |v| t.iter().map(|&m| (v >= m) as u8).sum());
            }
            Ok(0)
        }
        MmKind::Fp8E4M3 => {
            let s = f16_scale(absmax(x), E4M3_MAX, scale)?;
            encode_all(q, x, s, f32_to_e4m3);
            Ok(0)
        }
        MmKind::Fp8E5M2 => {
            let s = f16_scale(absmax(x), E5M2_MAX, scale)?;
            encode_all(q, x, s, f32_to_e5m2);
            Ok(0)
        }
        MmKind::Fp4E2M1 => {
            let s = f16_scale(absmax(x), E2M1_MAX, scale)?;
            encode_all(q, x, s, f32_to_e2m1);
            Ok(0)
        }
        MmKind::Mxfp4 => {
            let e = mxfp4_scale_exponent(absmax(x));
            scale[0] = e;
            for (c, &v) in q.iter_mut().zip(x) {
                *c = f32_to_e2m1(mx_unscale(v, e));
            }
            Ok(0)
        }
    }
}
