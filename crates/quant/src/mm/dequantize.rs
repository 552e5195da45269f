//! Reference dequantizers of the metal-marlin formats. The row function is
//! the building block: fast kernels and other crates reuse it per row.

use half::f16;
use mm_core::weight::{MmFormat, MmKind, MmScale};
use mm_core::{Error, Result, WeightData, WeightFormat};
use rayon::prelude::*;

use super::codec::{
    e2m1_to_f32, e4m3_to_f32, e5m2_to_f32, e8m0_to_f32, E4M3_TABLE, E5M2_TABLE, NF4_LEVELS,
};
use super::pack::unpack_unchecked;

/// Codes decoded per step (a multiple of every packing unit).
const CHUNK: usize = 128;

/// The f32 value of scale entry `i` of a scales part.
#[inline]
pub(crate) fn read_scale(fmt: MmFormat, scales: &[u8], i: usize) -> f32 {
    match fmt.kind.scale() {
        MmScale::F16 => f16::from_le_bytes([scales[2 * i], scales[2 * i + 1]]).to_f32(),
        MmScale::E8M0 => e8m0_to_f32(scales[i]),
    }
}

/// Checks the part sizes of one row of `cols` elements.
pub(crate) fn check_row_parts(
    fmt: MmFormat,
    cols: usize,
    codes: usize,
    scales: usize,
    zeros: Option<usize>,
) -> Result<()> {
    if fmt.kind.is_trellis() {
        return Err(Error::Invalid(format!(
            "{fmt}: rows are not stored on their own (16x16 tiles with transforms); decode the whole weight"
        )));
    }
    fmt.check_row_len(cols)?;
    let groups = fmt.groups_per_row(cols);
    let bad = |part: &str, need: usize, found: usize| {
        Err(Error::Invalid(format!(
            "{fmt}: a row of {cols} values needs {need} {part} bytes, found {found}"
        )))
    };
    if codes != fmt.code_bytes(cols) {
        return bad("code", fmt.code_bytes(cols), codes);
    }
    if scales != groups * fmt.scale_bytes() {
        return bad("scale", groups * fmt.scale_bytes(), scales);
    }
    match (zeros, fmt.kind.has_zeros()) {
        (Some(z), true) if z != groups => bad("zero-point", groups, z),
        (None, true) => Err(Error::Invalid(format!("{fmt}: zero-points are missing"))),
        (Some(_), false) => Err(Error::Invalid(format!(
            "{fmt}: symmetric formats have no zero-points"
        ))),
        _ => Ok(()),
    }
}

/// Dequantizes one row of `out.len()` values from its packed `codes`, its
/// `scales` (F16 LE, or E8M0 for MXFP4) and, for asymmetric formats, its
/// `zeros`. Each value is `decode(code) · scale` (`(code - zero) · scale`
/// for integers) computed in f32.
pub fn dequantize_mm_row(
    fmt: MmFormat,
    codes: &[u8],
    scales: &[u8],
    zeros: Option<&[u8]>,
    out: &mut [f32],
) -> Result<()> {
    check_row_parts(
        fmt,
        out.len(),
        codes.len(),
        scales.len(),
        zeros.map(|z| z.len()),
    )?;
    dequantize_row_unchecked(fmt, codes, scales, zeros, out);
    Ok(())
}

fn dequantize_row_unchecked(
    fmt: MmFormat,
    codes: &[u8],
    scales: &[u8],
    zeros: Option<&[u8]>,
    out: &mut [f32],
) {
    let bits = fmt.bits() as usize;
    let gl = fmt.group_len(out.len());
    let mut buf = [0u8; CHUNK];
    for (g, og) in out.chunks_exact_mut(gl).enumerate() {
        let s = read_scale(fmt, scales, g);
        // Value of each possible code of this group, for 2-, 3- and 4-bit codes.
        let mut lut = [0f32; 16];
        let small = bits <= 4;
        if small {
            for (c, l) in lut.iter_mut().enumerate().take(1 << bits) {
                *l = decode(fmt.kind, c as u8, zeros.map_or(0, |z| z[g])) * s;
            }
        }
        let zero = zeros.map_or(0, |z| z[g]);
        for (k, oc) in og.chunks_mut(CHUNK).enumerate() {
            let start = g * gl + k * CHUNK;
            let n = oc.len();
            unpack_unchecked(
                bits as u32,
                &codes[start * bits / 8..(start + n) * bits / 8],
                &mut buf[..n],
            );
            if small {
                for (o, &c) in oc.iter_mut().zip(&buf[..n]) {
                    *o = lut[c as usize];
                }
            } else {
                let codes = &buf[..n];
                match fmt.kind {
                    MmKind::Fp8E4M3 | MmKind::Fp8E5M2 => {
                        let t: &[f32; 256] = if fmt.kind == MmKind::Fp8E4M3 {
                            &E4M3_TABLE
                        } else {
                            &E5M2_TABLE
                        };
                        for (o, &c) in oc.iter_mut().zip(codes) {
                            *o = t[c as usize] * s;
                        }
                    }
                    _ => {
                        // 8-bit integers: v = code - zero (zero = 128 when symmetric).
                        let z = if fmt.kind.has_zeros() {
                            zero as i32
                        } else {
                            128
                        };
                        for (o, &c) in oc.iter_mut().zip(codes) {
                            *o = (c as i32 - z) as f32 * s;
                        }
                    }
                }
            }
        }
    }
}

/// The unscaled value of `code` (for integers: `code - zero`, with the
/// implicit zero `2^(bits-1)` of symmetric formats).
#[inline]
pub fn decode(kind: MmKind, code: u8, zero: u8) -> f32 {
    match kind {
        MmKind::IntSym(b) => (code as i32 - (1i32 << (b - 1))) as f32,
        MmKind::IntAsym(_) => (code as i32 - zero as i32) as f32,
        MmKind::Nf4 => NF4_LEVELS[(code & 0xF) as usize],
        MmKind::Fp8E4M3 => e4m3_to_f32(code),
        MmKind::Fp8E5M2 => e5m2_to_f32(code),
        MmKind::Fp4E2M1 | MmKind::Mxfp4 => e2m1_to_f32(code),
        // Trellis codes are not per-element bytes (`trellis::decode_tile`).
        MmKind::Trellis(_) => f32::NAN,
    }
}

fn check_parts(
    fmt: MmFormat,
    rows: usize,
    cols: usize,
    codes: &[u8],
    scales: &[u8],
    zeros: Option<&[u8]>,
) -> Result<()> {
    let sizes = fmt.part_sizes(rows, cols)?;
    let found = (codes.len(), scales.len(), zeros.map_or(0, |z| z.len()));
    if (sizes.codes, sizes.scales, sizes.zeros) != found || zeros.is_some() != fmt.kind.has_zeros()
    {
        return Err(Error::Invalid(format!(
            "{fmt} {rows}x{cols}: parts need (codes, scales, zeros) = ({}, {}, {}) bytes{}, found ({}, {}, {}){}",
            sizes.codes,
            sizes.scales,
            sizes.zeros,
            if fmt.kind.has_zeros() { "" } else { " without zeros" },
            found.0,
            found.1,
            found.2,
            if zeros.is_some() { "" } else { " without zeros" },
        )));
    }
    Ok(())
}

/// Dequantizes a `[rows, cols]` weight from its parts, rows in parallel.
pub fn dequantize_mm(
    fmt: MmFormat,
    rows: usize,
    cols: usize,
    codes: &[u8],
    scales: &[u8],
    zeros: Option<&[u8]>,
) -> Result<Vec<f32>> {
    check_parts(fmt, rows, cols, codes, scales, zeros)?;
    if let MmKind::Trellis(k) = fmt.kind {
        return crate::trellis::dequantize_trellis(k as u32, rows, cols, codes, scales);
    }
    let mut out = vec![0f32; rows * cols];
    let cb = fmt.code_bytes(cols);
    let groups = fmt.groups_per_row(cols);
    let sb = groups * fmt.scale_bytes();
    out.par_chunks_mut(cols)
        .enumerate()
        .with_min_len((1 << 14) / cols + 1)
        .for_each(|(r, o)| {
            dequantize_row_unchecked(
                fmt,
                &codes[r * cb..(r + 1) * cb],
                &scales[r * sb..(r + 1) * sb],
                zeros.map(|z| &z[r * groups..(r + 1) * groups]),
                o,
            )
        });
    Ok(out)
}

/// A [`WeightFormat::Mm`] weight's format, dimensions and parts.
type MmParts<'a> = (MmFormat, usize, usize, &'a [u8], &'a [u8], Option<&'a [u8]>);

fn mm_parts(w: &WeightData) -> Result<MmParts<'_>> {
    let WeightFormat::Mm(fmt) = w.format else {
        return Err(Error::Invalid(format!(
            "{} is not a metal-marlin quantized format",
            w.format.name()
        )));
    };
    let (rows, cols) = mm_core::weight::rows_cols(&w.shape)?;
    let scales = w
        .scales
        .as_deref()
        .ok_or_else(|| Error::Invalid(format!("{fmt} weight {:?} has no scales", w.shape)))?;
    Ok((fmt, rows, cols, &w.bytes[..], scales, w.zeros.as_deref()))
}

/// Code `i` of a little-endian bit stream of `bits`-bit codes.
#[inline]
pub fn code_at(packed: &[u8], bits: u32, i: usize) -> u8 {
    let bit = i * bits as usize;
    let (byte, shift) = (bit / 8, bit % 8);
    let lo = packed[byte] as u16;
    let hi = packed.get(byte + 1).map_or(0, |&b| b as u16);
    (((lo | hi << 8) >> shift) & ((1u16 << bits) - 1)) as u8
}

/// Scalar reference: the f32 values of a [`WeightFormat::Mm`] weight,
/// row-major, element by element on the calling thread, written
/// independently of the row kernel ([`dequantize_mm_row`]) it checks.
pub fn dequantize_mm_ref(w: &WeightData) -> Result<Vec<f32>> {
    let (fmt, rows, cols, codes, scales, zeros) = mm_parts(w)?;
    check_parts(fmt, rows, cols, codes, scales, zeros)?;
    if let MmKind::Trellis(k) = fmt.kind {
        return crate::trellis::dequantize_trellis_ref(k as u32, rows, cols, codes, scales);
    }
    let bits = fmt.bits();
    let row_bytes = fmt.code_bytes(cols);
    let gl = fmt.group_len(cols);
    let groups = fmt.groups_per_row(cols);
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        let row = &codes[r * row_bytes..(r + 1) * row_bytes];
        for c in 0..cols {
            let g = r * groups + c / gl;
            let zero = zeros.map_or(0, |z| z[g]);
            out.push(decode(fmt.kind, code_at(row, bits, c), zero) * read_scale(fmt, scales, g));
        }
    }
    Ok(out)
}

/// The f32 values of a [`WeightFormat::Mm`] weight, rows in parallel.
pub fn dequantize_mm_weight(w: &WeightData) -> Result<Vec<f32>> {
    let (fmt, rows, cols, codes, scales, zeros) = mm_parts(w)?;
    dequantize_mm(fmt, rows, cols, codes, scales, zeros)
}
