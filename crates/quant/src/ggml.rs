//! GGML block formats (Q4_0 … Q6_K) as llama.cpp writes them.
//!
//! Block layouts follow `ggml-common.h`; the dequantizers are bit-exact
//! twins of llama.cpp's `dequantize_row_*` (ggml-quants.c): the same f32
//! operations in the same order, no fused multiply-add. The quantizers
//! for the simple formats repeat `quantize_row_*_ref`.
//!
//! | format | elems | bytes | layout |
//! |--------|-------|-------|--------|
//! | Q4_0 | 32 | 18 | f16 d, u8 qs\[16\] |
//! | Q4_1 | 32 | 20 | f16 d, f16 m, u8 qs\[16\] |
//! | Q5_0 | 32 | 22 | f16 d, u8 qh\[4\], u8 qs\[16\] |
//! | Q5_1 | 32 | 24 | f16 d, f16 m, u8 qh\[4\], u8 qs\[16\] |
//! | Q8_0 | 32 | 34 | f16 d, i8 qs\[32\] |
//! | Q2_K | 256 | 84 | u8 scales\[16\], u8 qs\[64\], f16 d, f16 dmin |
//! | Q3_K | 256 | 110 | u8 hmask\[32\], u8 qs\[64\], u8 scales\[12\], f16 d |
//! | Q4_K | 256 | 144 | f16 d, f16 dmin, u8 scales\[12\], u8 qs\[128\] |
//! | Q5_K | 256 | 176 | f16 d, f16 dmin, u8 scales\[12\], u8 qh\[32\], u8 qs\[128\] |
//! | Q6_K | 256 | 210 | u8 ql\[128\], u8 qh\[64\], i8 scales\[16\], f16 d |

use half::f16;
use mm_core::{Error, Result, WeightFormat};

/// Elements per block of the simple formats.
pub const QK: usize = 32;
/// Elements per K-quant super-block.
pub const QK_K: usize = 256;
/// Bytes of the packed 6-bit scales/mins of Q4_K and Q5_K (and the 6-bit
/// scales of Q3_K).
pub const K_SCALE_SIZE: usize = 12;

pub const BLOCK_Q4_0: usize = 18;
pub const BLOCK_Q4_1: usize = 20;
pub const BLOCK_Q5_0: usize = 22;
pub const BLOCK_Q5_1: usize = 24;
pub const BLOCK_Q8_0: usize = 34;
pub const BLOCK_Q2_K: usize = 84;
pub const BLOCK_Q3_K: usize = 110;
pub const BLOCK_Q4_K: usize = 144;
pub const BLOCK_Q5_K: usize = 176;
pub const BLOCK_Q6_K: usize = 210;

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

#[inline(always)]
fn put_f16(b: &mut [u8], i: usize, v: f32) {
    let h = f16::from_f32(v).to_le_bytes();
    b[i] = h[0];
    b[i + 1] = h[1];
}

/// Runs `f` over every (block, output block) pair. Lengths are checked by
/// the caller, so both slices hold the same number of whole blocks.
#[inline(always)]
fn for_blocks<const B: usize, const E: usize>(
    bytes: &[u8],
    out: &mut [f32],
    f: impl Fn(&[u8; B], &mut [f32; E]),
) {
    for (b, y) in bytes.chunks_exact(B).zip(out.chunks_exact_mut(E)) {
        // chunks_exact yields slices of exactly B / E items.
        let b: &[u8; B] = b.try_into().expect("chunk of B bytes");
        let y: &mut [f32; E] = y.try_into().expect("chunk of E values");
        f(b, y);
    }
}

#[inline(always)]
fn for_blocks_q<const E: usize, const B: usize>(
    x: &[f32],
    out: &mut [u8],
    f: impl Fn(&[f32; E], &mut [u8; B]),
) {
    for (x, y) in x.chunks_exact(E).zip(out.chunks_exact_mut(B)) {
        let x: &[f32; E] = x.try_into().expect("chunk of E values");
        let y: &mut [u8; B] = y.try_into().expect("chunk of B bytes");
        f(x, y);
    }
}

fn check_len(format: WeightFormat, n_bytes: usize, n_values: usize) -> Result<()> {
    let need = format.bytes_for(n_values)?;
    if need != n_bytes {
        return Err(Error::Invalid(format!(
            "{} values of {} take {need} bytes, got {n_bytes}",
            n_values,
            format.name()
        )));
    }
    Ok(())
}

/// Dequantizes `out.len()` values of `format` from `bytes` (any format,
/// dense ones included). `bytes` must hold exactly that many values.
pub fn dequantize_row(format: WeightFormat, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    check_len(format, bytes.len(), out.len())?;
    match format {
        WeightFormat::F32 => match bytemuck::try_cast_slice::<u8, f32>(bytes) {
            Ok(v) => out.copy_from_slice(v),
            Err(_) => {
                for (y, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *y = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        },
        WeightFormat::F16 => match bytemuck::try_cast_slice::<u8, u16>(bytes) {
            Ok(v) => {
                use half::slice::HalfFloatSliceExt;
                let v: &[f16] = bytemuck::cast_slice(v);
                v.convert_to_f32_slice(out);
            }
            Err(_) => {
                for (y, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *y = f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
        },
        WeightFormat::BF16 => {
            for (y, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *y = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        WeightFormat::Q4_0 => for_blocks(bytes, out, dequantize_block_q4_0),
        WeightFormat::Q4_1 => for_blocks(bytes, out, dequantize_block_q4_1),
        WeightFormat::Q5_0 => for_blocks(bytes, out, dequantize_block_q5_0),
        WeightFormat::Q5_1 => for_blocks(bytes, out, dequantize_block_q5_1),
        WeightFormat::Q8_0 => for_blocks(bytes, out, dequantize_block_q8_0),
        WeightFormat::Q2K => for_blocks(bytes, out, dequantize_block_q2_k),
        WeightFormat::Q3K => for_blocks(bytes, out, dequantize_block_q3_k),
        WeightFormat::Q4K => for_blocks(bytes, out, dequantize_block_q4_k),
        WeightFormat::Q5K => for_blocks(bytes, out, dequantize_block_q5_k),
        WeightFormat::Q6K => for_blocks(bytes, out, dequantize_block_q6_k),
    }
    Ok(())
}

/// Dequantizes `n` values of `format` from `bytes` into a new vector.
pub fn dequantize(format: WeightFormat, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    check_len(format, bytes.len(), n)?;
    let mut out = vec![0f32; n];
    dequantize_row(format, bytes, &mut out)?;
    Ok(out)
}

/// Quantizes `x` into `out` (exactly `format.bytes_for(x.len())` bytes).
/// Supports the dense formats and Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 with the
/// math of llama.cpp's `quantize_row_*_ref`; K-quants are an error.
pub fn quantize_row(format: WeightFormat, x: &[f32], out: &mut [u8]) -> Result<()> {
    check_len(format, out.len(), x.len())?;
    match format {
        WeightFormat::F32 => {
            for (c, v) in out.chunks_exact_mut(4).zip(x) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        WeightFormat::F16 => {
            for (c, v) in out.chunks_exact_mut(2).zip(x) {
                c.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
            }
        }
        WeightFormat::BF16 => {
            for (c, v) in out.chunks_exact_mut(2).zip(x) {
                c.copy_from_slice(&fp32_to_bf16_bits(*v).to_le_bytes());
            }
        }
        WeightFormat::Q4_0 => for_blocks_q(x, out, quantize_block_q4_0),
        WeightFormat::Q4_1 => for_blocks_q(x, out, quantize_block_q4_1),
        WeightFormat::Q5_0 => for_blocks_q(x, out, quantize_block_q5_0),
        WeightFormat::Q5_1 => for_blocks_q(x, out, quantize_block_q5_1),
        WeightFormat::Q8_0 => for_blocks_q(x, out, quantize_block_q8_0),
        f => {
            return Err(Error::Invalid(format!(
                "quantizing to {} is not implemented (only F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)",
                f.name()
            )))
        }
    }
    Ok(())
}

/// Quantizes `x` into a new byte vector (see [`quantize_row`]).
pub fn quantize(format: WeightFormat, x: &[f32]) -> Result<Vec<u8>> {
    let mut out = vec![0u8; format.bytes_for(x.len())?];
    quantize_row(format, x, &mut out)?;
    Ok(out)
}

/// f32 → bf16 as `ggml_compute_fp32_to_bf16`: NaNs made quiet, otherwise
/// round to nearest even.
pub fn fp32_to_bf16_bits(v: f32) -> u16 {
    let u = v.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u as u64 + (0x7fff + ((u >> 16) & 1)) as u64) >> 16) as u16
}

// ---------------------------------------------------------------- Q4_0

pub fn dequantize_block_q4_0(b: &[u8; BLOCK_Q4_0], y: &mut [f32; QK]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..QK / 2 {
        let x0 = (qs[j] & 0x0F) as i32 - 8;
        let x1 = (qs[j] >> 4) as i32 - 8;
        y[j] = x0 as f32 * d;
        y[j + QK / 2] = x1 as f32 * d;
    }
}

/// Index and value of the first element of largest magnitude (0, 0 when
/// all are zero or NaN), as the `_ref` quantizers search it.
#[inline]
fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

#[inline]
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

pub fn quantize_block_q4_0(x: &[f32; QK], y: &mut [u8; BLOCK_Q4_0]) {
    let max = signed_absmax(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    for j in 0..QK / 2 {
        let x0 = x[j] * id;
        let x1 = x[QK / 2 + j] * id;
        let xi0 = ((x0 + 8.5) as i8).min(15) as u8;
        let xi1 = ((x1 + 8.5) as i8).min(15) as u8;
        y[2 + j] = xi0 | (xi1 << 4);
    }
}

// ---------------------------------------------------------------- Q4_1

pub fn dequantize_block_q4_1(b: &[u8; BLOCK_Q4_1], y: &mut [f32; QK]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for j in 0..QK / 2 {
        let x0 = (qs[j] & 0x0F) as i32;
        let x1 = (qs[j] >> 4) as i32;
        y[j] = x0 as f32 * d + m;
        y[j + QK / 2] = x1 as f32 * d + m;
    }
}

pub fn quantize_block_q4_1(x: &[f32; QK], y: &mut [u8; BLOCK_Q4_1]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    put_f16(y, 2, min);
    for j in 0..QK / 2 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[QK / 2 + j] - min) * id;
        let xi0 = ((x0 + 0.5) as i8).min(15) as u8;
        let xi1 = ((x1 + 0.5) as i8).min(15) as u8;
        y[4 + j] = xi0 | (xi1 << 4);
    }
}

// ---------------------------------------------------------------- Q5_0

pub fn dequantize_block_q5_0(b: &[u8; BLOCK_Q5_0], y: &mut [f32; QK]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..QK / 2 {
        let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
        let x0 = ((qs[j] & 0x0F) | xh_0) as i32 - 16;
        let x1 = ((qs[j] >> 4) | xh_1) as i32 - 16;
        y[j] = x0 as f32 * d;
        y[j + QK / 2] = x1 as f32 * d;
    }
}

pub fn quantize_block_q5_0(x: &[f32; QK], y: &mut [u8; BLOCK_Q5_0]) {
    let max = signed_absmax(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let x0 = x[j] * id;
        let x1 = x[QK / 2 + j] * id;
        let xi0 = ((x0 + 16.5) as i8).min(31) as u8;
        let xi1 = ((x1 + 16.5) as i8).min(31) as u8;
        y[6 + j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= (((xi0 & 0x10) >> 4) as u32) << j;
        qh |= (((xi1 & 0x10) >> 4) as u32) << (j + QK / 2);
    }
    y[2..6].copy_from_slice(&qh.to_le_bytes());
}

// ---------------------------------------------------------------- Q5_1

pub fn dequantize_block_q5_1(b: &[u8; BLOCK_Q5_1], y: &mut [f32; QK]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..QK / 2 {
        let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
        let x0 = ((qs[j] & 0x0F) | xh_0) as i32;
        let x1 = ((qs[j] >> 4) | xh_1) as i32;
        y[j] = x0 as f32 * d + m;
        y[j + QK / 2] = x1 as f32 * d + m;
    }
}

pub fn quantize_block_q5_1(x: &[f32; QK], y: &mut [u8; BLOCK_Q5_1]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    put_f16(y, 2, min);
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[QK / 2 + j] - min) * id;
        // llama.cpp casts straight to uint8_t; in range the results agree,
        // the clamp only keeps a rounding overshoot out of the sixth bit.
        let xi0 = ((x0 + 0.5) as u8).min(31);
        let xi1 = ((x1 + 0.5) as u8).min(31);
        y[8 + j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= (((xi0 & 0x10) >> 4) as u32) << j;
        qh |= (((xi1 & 0x10) >> 4) as u32) << (j + QK / 2);
    }
    y[4..8].copy_from_slice(&qh.to_le_bytes());
}

// ---------------------------------------------------------------- Q8_0

pub fn dequantize_block_q8_0(b: &[u8; BLOCK_Q8_0], y: &mut [f32; QK]) {
    let d = f16_at(b, 0);
    for j in 0..QK {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

pub fn quantize_block_q8_0(x: &[f32; QK], y: &mut [u8; BLOCK_Q8_0]) {
    let mut amax = 0.0f32;
    for &v in x {
        // MAX(amax, fabsf(v)) of the C code, NaN behaviour included.
        let a = v.abs();
        amax = if amax > a { amax } else { a };
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    for j in 0..QK {
        y[2 + j] = (x[j] * id).round() as i8 as u8;
    }
}

// ---------------------------------------------------------------- Q2_K

pub fn dequantize_block_q2_k(b: &[u8; BLOCK_Q2_K], y: &mut [f32; QK_K]) {
    let scales = &b[0..16];
    let d = f16_at(b, 80);
    let min = f16_at(b, 82);
    let mut is = 0;
    let mut o = 0;
    for n in 0..2 {
        let q = &b[16 + 32 * n..16 + 32 * n + 32];
        for shift in [0u32, 2, 4, 6] {
            for half in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * (sc & 0xF) as f32;
                let ml = min * (sc >> 4) as f32;
                for l in 0..16 {
                    let q = ((q[16 * half + l] >> shift) & 3) as i8;
                    y[o] = dl * q as f32 - ml;
                    o += 1;
                }
            }
        }
    }
}

// ---------------------------------------------------------------- Q3_K

/// The sixteen 6-bit scales of a Q3_K block, minus their offset 32, as
/// llama.cpp unpacks them (`kmask1`/`kmask2` shuffle of three u32 words).
pub fn unpack_q3_k_scales(s: &[u8; K_SCALE_SIZE]) -> [i8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let a0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let a1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let tmp = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let aux = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let mut out = [0i8; 16];
    for (i, w) in aux.iter().enumerate() {
        for (k, byte) in w.to_le_bytes().iter().enumerate() {
            out[4 * i + k] = *byte as i8 - 32;
        }
    }
    out
}

pub fn dequantize_block_q3_k(b: &[u8; BLOCK_Q3_K], y: &mut [f32; QK_K]) {
    let hm = &b[0..32];
    let scale_bytes: &[u8; K_SCALE_SIZE] = b[96..108].try_into().expect("12 scale bytes");
    let scales = unpack_q3_k_scales(scale_bytes);
    let d_all = f16_at(b, 108);
    let mut m = 1u8;
    let mut is = 0;
    let mut o = 0;
    for n in 0..2 {
        let q = &b[32 + 32 * n..32 + 32 * n + 32];
        for shift in [0u32, 2, 4, 6] {
            for half in 0..2 {
                let dl = d_all * scales[is] as f32;
                is += 1;
                for l in 0..16 {
                    let i = 16 * half + l;
                    let lo = ((q[i] >> shift) & 3) as i8;
                    let v = lo - if hm[i] & m != 0 { 0 } else { 4 };
                    y[o] = dl * v as f32;
                    o += 1;
                }
            }
            m = m.wrapping_shl(1);
        }
    }
}

// ---------------------------------------------------------------- Q4_K / Q5_K

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes of a
/// Q4_K/Q5_K block, as llama.cpp's `get_scale_min_k4`.
#[inline]
pub fn get_scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

pub fn dequantize_block_q4_k(b: &[u8; BLOCK_Q4_K], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales: &[u8; K_SCALE_SIZE] = b[4..16].try_into().expect("12 scale bytes");
    let mut o = 0;
    for n in 0..4 {
        let is = 2 * n;
        let q = &b[16 + 32 * n..16 + 32 * n + 32];
        let (sc, m) = get_scale_min_k4(is, scales);
        let d1 = d * sc as f32;
        let m1 = min * m as f32;
        let (sc, m) = get_scale_min_k4(is + 1, scales);
        let d2 = d * sc as f32;
        let m2 = min * m as f32;
        for l in 0..32 {
            y[o + l] = d1 * (q[l] & 0xF) as f32 - m1;
        }
        for l in 0..32 {
            y[o + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
        }
        o += 64;
    }
}

pub fn dequantize_block_q5_k(b: &[u8; BLOCK_Q5_K], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales: &[u8; K_SCALE_SIZE] = b[4..16].try_into().expect("12 scale bytes");
    let qh = &b[16..48];
    let mut u1 = 1u8;
    let mut u2 = 2u8;
    let mut o = 0;
    for n in 0..4 {
        let ql = &b[48 + 32 * n..48 + 32 * n + 32];
        let is = 2 * n;
        let (sc, m) = get_scale_min_k4(is, scales);
        let d1 = d * sc as f32;
        let m1 = min * m as f32;
        let (sc, m) = get_scale_min_k4(is + 1, scales);
        let d2 = d * sc as f32;
        let m2 = min * m as f32;
        for l in 0..32 {
            let h = if qh[l] & u1 != 0 { 16 } else { 0 };
            y[o + l] = d1 * ((ql[l] & 0xF) + h) as f32 - m1;
        }
        for l in 0..32 {
            let h = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[o + 32 + l] = d2 * ((ql[l] >> 4) + h) as f32 - m2;
        }
        o += 64;
        u1 = u1.wrapping_shl(2);
        u2 = u2.wrapping_shl(2);
    }
}

// ---------------------------------------------------------------- Q6_K

pub fn dequantize_block_q6_k(b: &[u8; BLOCK_Q6_K], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 208);
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let y = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_min_k4_low_and_high() {
        // j < 4: low six bits of bytes j and j+4.
        let mut q = [0u8; 12];
        q[1] = 0b11_000101; // scale 5, two high bits for sub-block 5
        q[5] = 0b01_101010; // min 42, high bits for min of sub-block 5
        q[9] = 0xA7; // sub-block 5: low nibble scale 7, high nibble min 10
        assert_eq!(get_scale_min_k4(1, &q), (5, 42));
        assert_eq!(get_scale_min_k4(5, &q), (7 | (3 << 4), 10 | (1 << 4)));
    }

    #[test]
    fn bf16_nan_is_quiet() {
        assert_eq!(fp32_to_bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(fp32_to_bf16_bits(1.0), 0x3f80);
    }
}
