//! The GPU layout of quantized weights, derived once at load
//! (`Backend::prepare`) from the stored format, and its host reference.
//!
//! Every supported format becomes one shape the kernels of
//! the GPU backends read (CUDA `kernels/qmatmul.cu`, wgpu
//! `shaders/w_q4.wgsl` and `w_q8.wgsl`): codes widened to 4 bits (formats of 2–4-bit
//! codes) or 8 bits (5–8-bit codes), a table `lut[2^bits]` of their
//! unscaled values, and per group of `group` columns a scale `s` and an
//! offset `o`, so that
//!
//! ```text
//! w[r, c] = s[r, g]·lut[code[r, c]] + o[r, g],   g = c / group
//! ```
//!
//! which lets a kernel sum `lut[code]·x` and `x` over a group and apply
//! the group's two numbers once. The parameters keep each format's own
//! precision, so the bytes read per weight stay near the stored ones:
//! f16 scales (and f16 offsets or zero-points) where the format stores
//! f16, f32 where a scale is a product (K-quants) or a power of two past
//! f16's range (MXFP4). Every value equals the format's reference
//! dequantization up to f32 rounding of `s·lut + o` ([`QLayout::dequantize`]
//! is checked against `dequantize_ref` in the conformance tests).
//!
//! Rows are padded with zero codes to `kp`, a multiple of 32 columns, so
//! every row starts 16-byte aligned; the kernels never read `x` past `cols`.

use crate::ggml::{get_scale_min_k4, K_SCALE_SIZE};
use half::f16;
use mm_core::weight::{MmKind, MmScale};
use mm_core::{Error, Result, WeightData, WeightFormat};

/// How a group's parameters are stored (the kernels' `P`).
#[derive(Clone, Debug, PartialEq)]
pub enum Params {
    /// `s` as f16; `o = 0`.
    S16(Vec<u16>),
    /// `(s, o)` as f16 pairs.
    S16O16(Vec<u16>),
    /// `(s, z)` as f16 pairs; `o = −s·z` (asymmetric integer formats).
    S16Z16(Vec<u16>),
    /// `(s, o)` as f32 pairs.
    S32O32(Vec<f32>),
    /// `s` as f32; `o = 0`.
    S32(Vec<f32>),
}

impl Params {
    /// The kernels' template index of this storage.
    pub fn mode(&self) -> u32 {
        match self {
            Params::S16(_) => 0,
            Params::S16O16(_) => 1,
            Params::S16Z16(_) => 2,
            Params::S32O32(_) => 3,
            Params::S32(_) => 4,
        }
    }

    /// `(s, o)` of group entry `i`.
    pub fn get(&self, i: usize) -> (f32, f32) {
        let h = |b: u16| f16::from_bits(b).to_f32();
        match self {
            Params::S16(v) => (h(v[i]), 0.0),
            Params::S16O16(v) => (h(v[2 * i]), h(v[2 * i + 1])),
            Params::S16Z16(v) => {
                let s = h(v[2 * i]);
                (s, -s * h(v[2 * i + 1]))
            }
            Params::S32O32(v) => (v[2 * i], v[2 * i + 1]),
            Params::S32(v) => (v[i], 0.0),
        }
    }

    /// The bytes as the GPU takes them (little-endian).
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Params::S16(v) | Params::S16O16(v) | Params::S16Z16(v) => {
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
            Params::S32O32(v) | Params::S32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// A weight `[rows, cols]` in the GPU's quantized layout.
#[derive(Clone, Debug)]
pub struct QLayout {
    pub rows: usize,
    pub cols: usize,
    /// Columns per row as stored: `cols` rounded up to 32.
    pub kp: usize,
    /// Bits per code: 4 or 8.
    pub bits: u32,
    /// Columns per parameter group (16, 32, 64, 128, or `kp`: one per row).
    pub group: usize,
    /// Unscaled value of each code.
    pub lut: Vec<f32>,
    /// `rows × kp·bits/8` bytes; code `c` of a row at bits `bits·c` of
    /// the row's little-endian bit stream.
    pub codes: Vec<u8>,
    /// `rows × kp/group` groups, row-major.
    pub params: Params,
}

/// Whether [`QLayout::from_weight`] takes weights of `f`.
pub fn supports(f: WeightFormat) -> bool {
    use WeightFormat as F;
    match f {
        F::Q4_0 | F::Q4_1 | F::Q5_0 | F::Q5_1 | F::Q8_0 => true,
        F::Q2K | F::Q3K | F::Q4K | F::Q5K | F::Q6K => true,
        // Trellis tiles have their own kernels (not this layout).
        F::Mm(m) => !m.kind.is_trellis(),
        F::F32 | F::F16 | F::BF16 => false,
    }
}

fn f16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn h2f(b: u16) -> f32 {
    f16::from_bits(b).to_f32()
}

/// Per-format codes and parameters of one row, filled block by block.
struct Row<'a> {
    codes: &'a mut [u8],
    params: Vec<(f32, f32)>,
    raw16: Vec<u16>,
}

impl QLayout {
    /// The layout of `w`, or an error naming a format the GPU does not
    /// take ([`supports`]).
    pub fn from_weight(w: &WeightData) -> Result<Self> {
        use WeightFormat as F;
        let (rows, cols) = w.dims2()?;
        let kp = cols.div_ceil(32) * 32;
        let unsupported = || {
            Error::Invalid(format!(
                "{} weights have no GPU layout yet",
                w.format.name()
            ))
        };
        // (bits, group, lut, parameter mode)
        let (bits, group, lut, mode): (u32, usize, Vec<f32>, u32) = match w.format {
            F::Q4_0 => (4, 32, (0..16).map(|c| c as f32 - 8.0).collect(), 0),
            F::Q4_1 => (4, 32, (0..16).map(|c| c as f32).collect(), 1),
            F::Q5_0 => (8, 32, lut8(|c| c as f32 - 16.0), 0),
            F::Q5_1 => (8, 32, lut8(|c| c as f32), 1),
            // Offset binary (the stored i8 + 128): an affine table.
            F::Q8_0 => (8, 32, lut8(|c| c as f32 - 128.0), 0),
            F::Q4K => (4, 32, (0..16).map(|c| c as f32).collect(), 3),
            F::Q5K => (8, 32, lut8(|c| c as f32), 3),
            F::Q6K => (8, 16, lut8(|c| c as f32 - 32.0), 4),
            // Groups of 16 take 8-bit codes (a 16-code unit per group):
            // correct, at 1.5 (Q2_K) and 1.25 (Q3_K) bytes per weight
            // where the file holds 0.33 and 0.43.
            F::Q2K => (8, 16, lut8(|c| c as f32), 3),
            F::Q3K => (8, 16, lut8(|c| c as f32 - 4.0), 4),
            F::Mm(f) => {
                let group = if f.group == 0 { kp } else { f.group as usize };
                let bits = if f.bits() <= 4 { 4 } else { 8 };
                let table: Vec<f32> = (0..1u32 << bits)
                    .map(|c| match f.kind {
                        MmKind::IntAsym(_) => c as f32,
                        k => crate::mm::decode(k, c as u8, 0),
                    })
                    .collect();
                let mode = match (f.kind, f.kind.scale()) {
                    (MmKind::IntAsym(_), _) => 2,
                    (_, MmScale::E8M0) => 4,
                    _ => 0,
                };
                (bits, group, table, mode)
            }
            _ => return Err(unsupported()),
        };
        let groups = kp / group;
        let mut codes = vec![0u8; rows * kp];
        let mut all: Vec<(f32, f32)> = Vec::with_capacity(rows * groups);
        let mut raw: Vec<u16> = Vec::new();
        let row_bytes = w.format.bytes_for(cols)?;
        for (r, rc) in codes.chunks_exact_mut(kp).enumerate() {
            let mut row = Row {
                codes: rc,
                params: Vec::with_capacity(groups),
                raw16: Vec::new(),
            };
            match w.format {
                F::Mm(f) => mm_row(w, f, r, cols, &mut row)?,
                f => {
                    let src = &w.bytes[r * row_bytes..][..row_bytes];
                    ggml_row(f, src, &mut row);
                }
            }
            let found = if mode >= 3 {
                row.params.len()
            } else {
                row.raw16.len() / raw_width(mode)
            };
            if found != groups {
                return Err(Error::Other(format!(
                    "GPU layout of {} {rows}x{cols}: {found} groups in a row, expected {groups}",
                    w.format.name()
                )));
            }
            all.extend(row.params);
            raw.extend(row.raw16);
        }
        let params = match mode {
            0 => Params::S16(raw),
            1 => Params::S16O16(raw),
            2 => Params::S16Z16(raw),
            3 => Params::S32O32(all.iter().flat_map(|&(s, o)| [s, o]).collect()),
            _ => Params::S32(all.iter().map(|&(s, _)| s).collect()),
        };
        Ok(Self {
            rows,
            cols,
            kp,
            bits,
            group,
            lut,
            codes: pack(bits, &codes),
            params,
        })
    }

    /// Host reference of the layout: `[rows, cols]` values `s·lut[c] + o`,
    /// in f32 as the kernels form them.
    pub fn dequantize(&self) -> Vec<f32> {
        self.dequantize_rows(0..self.rows)
    }

    /// [`QLayout::dequantize`] of rows `rows` only.
    pub fn dequantize_rows(&self, rows: std::ops::Range<usize>) -> Vec<f32> {
        let groups = self.kp / self.group;
        let mut out = Vec::with_capacity(rows.len() * self.cols);
        for r in rows {
            for c in 0..self.cols {
                let i = r * self.kp + c;
                let code = match self.bits {
                    4 => (self.codes[i / 2] >> (4 * (i % 2))) & 15,
                    _ => self.codes[i],
                };
                let (s, o) = self.params.get(r * groups + c / self.group);
                out.push(s * self.lut[code as usize] + o);
            }
        }
        out
    }
}

/// f16 numbers per group in modes 0–2 (0 for the f32 modes).
fn raw_width(mode: u32) -> usize {
    match mode {
        0 => 1,
        1 | 2 => 2,
        _ => 0,
    }
}

fn lut8(f: impl Fn(u8) -> f32) -> Vec<f32> {
    (0..=255u8).map(f).collect()
}

/// One code per byte → `bits` per code, little-endian.
fn pack(bits: u32, codes: &[u8]) -> Vec<u8> {
    match bits {
        4 => codes
            .chunks_exact(2)
            .map(|c| (c[0] & 15) | (c[1] << 4))
            .collect(),
        _ => codes.to_vec(),
    }
}

fn mm_row(
    w: &WeightData,
    f: mm_core::weight::MmFormat,
    r: usize,
    cols: usize,
    row: &mut Row,
) -> Result<()> {
    let missing = |part: &str| Error::Invalid(format!("{} weight without {part}", f.name()));
    let scales = w.scales.as_ref().ok_or_else(|| missing("scales"))?;
    let groups = f.groups_per_row(cols);
    let cb = f.code_bytes(cols);
    crate::mm::unpack_codes(f.bits(), &w.bytes[r * cb..][..cb], &mut row.codes[..cols])?;
    for g in 0..groups {
        match f.kind.scale() {
            MmScale::F16 => row.raw16.push(f16_at(scales, 2 * (r * groups + g))),
            MmScale::E8M0 => row
                .params
                .push((crate::mm::codec::e8m0_to_f32(scales[r * groups + g]), 0.0)),
        }
        if f.kind.has_zeros() {
            let zeros = w.zeros.as_ref().ok_or_else(|| missing("zero-points"))?;
            let z = zeros[r * groups + g];
            row.raw16.push(f16::from_f32(z as f32).to_bits());
        }
    }
    Ok(())
}

/// Codes and parameters of one row of a GGML block format.
fn ggml_row(f: WeightFormat, src: &[u8], row: &mut Row) {
    use WeightFormat as F;
    let (be, bb) = f.block();
    for (b, blk) in src.chunks_exact(bb).enumerate() {
        let out = &mut row.codes[b * be..][..be];
        match f {
            F::Q4_0 | F::Q4_1 => {
                let qs = &blk[if f == F::Q4_0 { 2 } else { 4 }..];
                for j in 0..16 {
                    out[j] = qs[j] & 15;
                    out[j + 16] = qs[j] >> 4;
                }
                row.raw16.push(f16_at(blk, 0));
                if f == F::Q4_1 {
                    row.raw16.push(f16_at(blk, 2));
                }
            }
            F::Q5_0 | F::Q5_1 => {
                let o = if f == F::Q5_0 { 2 } else { 4 };
                let qh = u32::from_le_bytes([blk[o], blk[o + 1], blk[o + 2], blk[o + 3]]);
                let qs = &blk[o + 4..];
                for j in 0..16 {
                    out[j] = (qs[j] & 15) | ((((qh >> j) << 4) & 0x10) as u8);
                    out[j + 16] = (qs[j] >> 4) | (((qh >> (j + 12)) & 0x10) as u8);
                }
                row.raw16.push(f16_at(blk, 0));
                if f == F::Q5_1 {
                    row.raw16.push(f16_at(blk, 2));
                }
            }
            F::Q8_0 => {
                for (o, &q) in out.iter_mut().zip(&blk[2..34]) {
                    *o = q ^ 0x80;
                }
                row.raw16.push(f16_at(blk, 0));
            }
            F::Q4K | F::Q5K => {
                let (d, dmin) = (h2f(f16_at(blk, 0)), h2f(f16_at(blk, 2)));
                let sc: &[u8; K_SCALE_SIZE] = blk[4..16].try_into().expect("12 scale bytes");
                let (qh, ql) = if f == F::Q5K {
                    (Some(&blk[16..48]), &blk[48..176])
                } else {
                    (None, &blk[16..144])
                };
                for n in 0..4 {
                    let q = &ql[32 * n..32 * n + 32];
                    for l in 0..32 {
                        let (hi0, hi1) = qh.map_or((0, 0), |h| {
                            (
                                ((h[l] >> (2 * n)) & 1) << 4,
                                ((h[l] >> (2 * n + 1)) & 1) << 4,
                            )
                        });
                        out[64 * n + l] = (q[l] & 15) | hi0;
                        out[64 * n + 32 + l] = (q[l] >> 4) | hi1;
                    }
                    for is in [2 * n, 2 * n + 1] {
                        let (s, m) = get_scale_min_k4(is, sc);
                        row.params.push((d * s as f32, -(dmin * m as f32)));
                    }
                }
            }
            F::Q2K => {
                let (d, dmin) = (h2f(f16_at(blk, 80)), h2f(f16_at(blk, 82)));
                for (o16, chunk) in out.chunks_exact_mut(16).enumerate() {
                    // Group o16 = (n, shift, half) in llama.cpp's order.
                    let (n, shift, half) = (o16 / 8, 2 * ((o16 / 2) % 4), o16 % 2);
                    let q = &blk[16 + 32 * n + 16 * half..][..16];
                    for (c, &b) in chunk.iter_mut().zip(q) {
                        *c = (b >> shift) & 3;
                    }
                    let sc = blk[o16];
                    row.params
                        .push((d * (sc & 15) as f32, -(dmin * (sc >> 4) as f32)));
                }
            }
            F::Q3K => {
                let hm = &blk[0..32];
                let sb: &[u8; K_SCALE_SIZE] = blk[96..108].try_into().expect("12 scale bytes");
                let scales = crate::ggml::unpack_q3_k_scales(sb);
                let d = h2f(f16_at(blk, 108));
                for (o16, chunk) in out.chunks_exact_mut(16).enumerate() {
                    let (n, j, half) = (o16 / 8, (o16 / 2) % 4, o16 % 2);
                    let q = &blk[32 + 32 * n + 16 * half..][..16];
                    let mask = 1u8 << (4 * n + j);
                    for (l, c) in chunk.iter_mut().enumerate() {
                        let hi = u8::from(hm[16 * half + l] & mask != 0);
                        *c = ((q[l] >> (2 * j)) & 3) + 4 * hi;
                    }
                    row.params.push((d * scales[o16] as f32, 0.0));
                }
            }
            F::Q6K => {
                let d = h2f(f16_at(blk, 208));
                for n in 0..2 {
                    let ql = &blk[64 * n..64 * n + 64];
                    let qh = &blk[128 + 32 * n..128 + 32 * n + 32];
                    let o = &mut out[128 * n..128 * n + 128];
                    for l in 0..32 {
                        o[l] = (ql[l] & 15) | ((qh[l] & 3) << 4);
                        o[l + 32] = (ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4);
                        o[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                        o[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                    }
                }
                for g in 0..16 {
                    row.params.push((d * (blk[192 + g] as i8) as f32, 0.0));
                }
            }
            _ => unreachable!("checked by supports()"),
        }
    }
}
