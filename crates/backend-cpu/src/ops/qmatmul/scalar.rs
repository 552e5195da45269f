//! Portable scalar kernels: the `_ref` twin of every SIMD dot product.
//!
//! Each function computes, for one weight row in its GGML block layout and
//! one quantized activation row ([`ActRow`]), exactly the integer sums the
//! SIMD kernels compute (per block: `Σ q_w·q_x`, the offset/min terms from
//! the activation block sums) and combines them with the block scales in
//! f32. SIMD and scalar therefore differ only in the order of the f32
//! additions (≈1e-6 relative).
//!
//! Block layouts (llama.cpp `ggml-common.h`, all little-endian, f16 scales):
//!
//! | format | bytes | layout |
//! | --- | --- | --- |
//! | Q4_0 | 18 | `d`, `qs[16]`: x = d·(q − 8), low nibbles first 16 |
//! | Q4_1 | 20 | `d`, `m`, `qs[16]`: x = d·q + m |
//! | Q5_0 | 22 | `d`, `qh[4]`, `qs[16]`: fifth bit of element j in bit j of qh; x = d·(q − 16) |
//! | Q5_1 | 24 | `d`, `m`, `qh[4]`, `qs[16]`: x = d·q + m |
//! | Q8_0 | 34 | `d`, `qs[32]` (i8): x = d·q |
//! | Q2_K | 84 | `scales[16]` (lo 4 bits scale, hi 4 bits min), `qs[64]`, `d`, `dmin` |
//! | Q3_K | 110 | `hmask[32]`, `qs[64]`, `scales[12]` (16 × 6 bits, −32), `d` |
//! | Q4_K | 144 | `d`, `dmin`, `scales[12]` (8 × 6-bit scale + 8 × 6-bit min), `qs[128]` |
//! | Q5_K | 176 | `d`, `dmin`, `scales[12]`, `qh[32]`, `qs[128]` |
//! | Q6_K | 210 | `ql[128]`, `qh[64]`, `scales[16]` (i8), `d`: x = d·sc·(q − 32) |

use mm_core::{Error, Result, WeightFormat};

use super::q8::ActRow;

/// IEEE half to f32 (exact).
#[inline(always)]
pub fn f16_to_f32(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// Weight values of one K-quant super-block as unsigned integers with, per
/// 16-element sub-block, an integer scale and an integer min coefficient:
/// `x[e] = d·sc[e/16]·u[e] − dm·mn[e/16]`, where `dm` is `dmin` for
/// Q2_K/Q4_K/Q5_K and `d` for Q3_K/Q6_K (whose constant offset is folded
/// into `mn`).
pub struct KUnpacked {
    pub u: [u8; 256],
    pub sc: [i32; 16],
    pub mn: [i32; 16],
    pub d: f32,
    pub dm: f32,
    /// `dm` is `d` (Q3_K, Q6_K): both integer sums share one scale.
    pub same_scale: bool,
}

/// 6-bit scale and min `j` (0..8) of a Q4_K/Q5_K super-block
/// (llama.cpp `get_scale_min_k4`).
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The 16 signed 6-bit scales of a Q3_K super-block, already minus 32.
#[inline(always)]
pub fn q3k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for j in 0..16 {
        let lo = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
        let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        out[j] = (lo | (hi << 4)) as i8 - 32;
    }
    out
}

/// Unpacks one K-quant super-block (see [`KUnpacked`]).
pub fn unpack_k(format: WeightFormat, b: &[u8]) -> KUnpacked {
    let mut k = KUnpacked {
        u: [0; 256],
        sc: [0; 16],
        mn: [0; 16],
        d: 0.0,
        dm: 0.0,
        same_scale: false,
    };
    match format {
        WeightFormat::Q2K => {
            let (scales, qs) = (&b[0..16], &b[16..80]);
            k.d = f16_to_f32(&b[80..]);
            k.dm = f16_to_f32(&b[82..]);
            for s in 0..16 {
                k.sc[s] = (scales[s] & 0xF) as i32;
                k.mn[s] = (scales[s] >> 4) as i32;
            }
            for e in 0..256 {
                let (half, j, l) = (e / 128, (e % 128) / 32, e % 32);
                k.u[e] = (qs[32 * half + l] >> (2 * j)) & 3;
            }
        }
        WeightFormat::Q3K => {
            let (hmask, qs) = (&b[0..32], &b[32..96]);
            k.d = f16_to_f32(&b[108..]);
            k.dm = k.d;
            k.same_scale = true;
            let sc = q3k_scales(&b[96..108]);
            for s in 0..16 {
                k.sc[s] = sc[s] as i32;
                k.mn[s] = 4 * sc[s] as i32;
            }
            for e in 0..256 {
                let (half, j, l) = (e / 128, (e % 128) / 32, e % 32);
                let q2 = (qs[32 * half + l] >> (2 * j)) & 3;
                let h = (hmask[l] >> (e / 32)) & 1;
                k.u[e] = q2 | (h << 2);
            }
        }
        WeightFormat::Q4K | WeightFormat::Q5K => {
            k.d = f16_to_f32(&b[0..]);
            k.dm = f16_to_f32(&b[2..]);
            let scales = &b[4..16];
            for j in 0..8 {
                let (sc, m) = scale_min_k4(j, scales);
                k.sc[2 * j] = sc as i32;
                k.sc[2 * j + 1] = sc as i32;
                k.mn[2 * j] = m as i32;
                k.mn[2 * j + 1] = m as i32;
            }
            let five = format == WeightFormat::Q5K;
            let (qh, qs) = if five {
                (&b[16..48], &b[48..176])
            } else {
                (&b[0..0], &b[16..144])
            };
            for e in 0..256 {
                let (c, l) = (e / 32, e % 32);
                let byte = qs[32 * (c / 2) + l];
                let lo = if c % 2 == 0 { byte & 0xF } else { byte >> 4 };
                let hi = if five { ((qh[l] >> c) & 1) << 4 } else { 0 };
                k.u[e] = lo | hi;
            }
        }
        WeightFormat::Q6K => {
            let (ql, qh) = (&b[0..128], &b[128..192]);
            k.d = f16_to_f32(&b[208..]);
            k.dm = k.d;
            k.same_scale = true;
            for s in 0..16 {
                let sc = b[192 + s] as i8 as i32;
                k.sc[s] = sc;
                k.mn[s] = 32 * sc;
            }
            for e in 0..256 {
                let (half, q, l) = (e / 128, (e % 128) / 32, e % 32);
                let lq = ql[64 * half + 32 * (q % 2) + l];
                let lo = if q < 2 { lq & 0xF } else { lq >> 4 };
                let hi = (qh[32 * half + l] >> (2 * q)) & 3;
                k.u[e] = lo | (hi << 4);
            }
        }
        f => unreachable!("{} is not a K-quant", f.name()),
    }
    k
}

/// Unsigned values, integer offset and scales of one 32-element block:
/// `x = d·(u − off) + m`.
pub struct Unpacked32 {
    pub u: [u8; 32],
    pub off: i32,
    pub d: f32,
    pub m: f32,
}

/// Unpacks one block of a 32-element format. Q8_0's signed values are
/// returned as `u = q + 128, off = 128`.
pub fn unpack_32(format: WeightFormat, b: &[u8]) -> Unpacked32 {
    let mut p = Unpacked32 {
        u: [0; 32],
        off: 0,
        d: f16_to_f32(b),
        m: 0.0,
    };
    let nib = |u: &mut [u8; 32], qs: &[u8]| {
        for j in 0..16 {
            u[j] = qs[j] & 0xF;
            u[j + 16] = qs[j] >> 4;
        }
    };
    let high = |u: &mut [u8; 32], qh: u32| {
        for (j, v) in u.iter_mut().enumerate() {
            *v |= (((qh >> j) & 1) << 4) as u8;
        }
    };
    let qh_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    match format {
        WeightFormat::Q4_0 => {
            nib(&mut p.u, &b[2..18]);
            p.off = 8;
        }
        WeightFormat::Q4_1 => {
            p.m = f16_to_f32(&b[2..]);
            nib(&mut p.u, &b[4..20]);
        }
        WeightFormat::Q5_0 => {
            nib(&mut p.u, &b[6..22]);
            high(&mut p.u, qh_at(2));
            p.off = 16;
        }
        WeightFormat::Q5_1 => {
            p.m = f16_to_f32(&b[2..]);
            nib(&mut p.u, &b[8..24]);
            high(&mut p.u, qh_at(4));
        }
        WeightFormat::Q8_0 => {
            for j in 0..32 {
                p.u[j] = (b[2 + j] as i8 as i32 + 128) as u8;
            }
            p.off = 128;
        }
        f => unreachable!("{} is not a 32-element block format", f.name()),
    }
    p
}

/// True for the formats with 256-element super-blocks (Q8_K activations).
pub fn is_kquant(format: WeightFormat) -> bool {
    matches!(
        format,
        WeightFormat::Q2K
            | WeightFormat::Q3K
            | WeightFormat::Q4K
            | WeightFormat::Q5K
            | WeightFormat::Q6K
    )
}

/// True for the formats whose blocks carry a min (`x = d·q + m`): their dot
/// product needs the activation block sums as floats.
pub fn has_min(format: WeightFormat) -> bool {
    matches!(format, WeightFormat::Q4_1 | WeightFormat::Q5_1)
}

/// Dot product of one weight row (GGML blocks) with one quantized
/// activation row: exact integer sums per block, f32 combination.
pub fn vec_dot(format: WeightFormat, w: &[u8], x: &ActRow) -> f32 {
    let (qk, bb) = format.block();
    let nb = w.len() / bb;
    let mut sum = 0.0f32;
    if is_kquant(format) {
        for b in 0..nb {
            let k = unpack_k(format, &w[b * bb..(b + 1) * bb]);
            let xq = &x.qs[b * 256..(b + 1) * 256];
            let bs = &x.bsums[b * 16..(b + 1) * 16];
            let (mut main, mut mins) = (0i32, 0i32);
            for s in 0..16 {
                let mut p = 0i32;
                for e in 16 * s..16 * s + 16 {
                    p += k.u[e] as i32 * xq[e] as i32;
                }
                main += k.sc[s] * p;
                mins += k.mn[s] * bs[s] as i32;
            }
            let dx = x.d[b];
            if k.same_scale {
                sum += (k.d * dx) * (main - mins) as f32;
            } else {
                sum += (k.d * dx) * main as f32 - (k.dm * dx) * mins as f32;
            }
        }
    } else {
        debug_assert_eq!(qk, 32);
        let min = has_min(format);
        for b in 0..nb {
            let p = unpack_32(format, &w[b * bb..(b + 1) * bb]);
            let xq = &x.qs[b * 32..(b + 1) * 32];
            let mut int = -p.off * x.isum[b];
            for j in 0..32 {
                int += p.u[j] as i32 * xq[j] as i32;
            }
            sum += (p.d * x.d[b]) * int as f32;
            if min {
                sum += p.m * x.s[b];
            }
        }
    }
    sum
}

/// Scalar panel: `y[r·ldy + j] = w[j] · x[r]` for `rows` weight rows and
/// every activation row of `xs`.
pub fn panel(
    format: WeightFormat,
    w: &[u8],
    row_bytes: usize,
    xs: &[ActRow],
    y: &mut [f32],
    ldy: usize,
) {
    for (j, wr) in w.chunks_exact(row_bytes).enumerate() {
        for (r, x) in xs.iter().enumerate() {
            y[r * ldy + j] = vec_dot(format, wr, x);
        }
    }
}

/// Dequantizes GGML blocks with llama.cpp's formulas (`dequantize_row_*`),
/// written independently of `mm_quant` so the block layouts the kernels
/// assume are checked against it.
pub fn dequantize_row_ref(format: WeightFormat, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let (qk, bb) = format.block();
    if format.is_dense() || bytes.len() != out.len() / qk * bb || out.len() % qk != 0 {
        return Err(Error::Invalid(format!(
            "dequantize_row_ref: {} bytes of {} for {} values",
            bytes.len(),
            format.name(),
            out.len()
        )));
    }
    for (b, y) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(qk)) {
        let d = f16_to_f32(b);
        match format {
            WeightFormat::Q4_0 | WeightFormat::Q4_1 | WeightFormat::Q5_0 | WeightFormat::Q5_1 => {
                let p = unpack_32(format, b);
                for j in 0..32 {
                    y[j] = if has_min(format) {
                        p.u[j] as f32 * p.d + p.m
                    } else {
                        (p.u[j] as i32 - p.off) as f32 * p.d
                    };
                }
            }
            WeightFormat::Q8_0 => {
                for j in 0..32 {
                    y[j] = b[2 + j] as i8 as f32 * d;
                }
            }
            WeightFormat::Q2K => {
                let (d, dmin) = (f16_to_f32(&b[80..]), f16_to_f32(&b[82..]));
                let mut i = 0;
                for half in 0..2 {
                    let q = &b[16 + 32 * half..];
                    for j in 0..4 {
                        for h in 0..2 {
                            let sc = b[8 * half + 2 * j + h];
                            let (dl, ml) = (d * (sc & 0xF) as f32, dmin * (sc >> 4) as f32);
                            for l in 0..16 {
                                y[i] = dl * ((q[l + 16 * h] >> (2 * j)) & 3) as f32 - ml;
                                i += 1;
                            }
                        }
                    }
                }
            }
            WeightFormat::Q3K => {
                let d_all = f16_to_f32(&b[108..]);
                let sc = q3k_scales(&b[96..108]);
                let hm = &b[0..32];
                let mut i = 0;
                for half in 0..2 {
                    let q = &b[32 + 32 * half..];
                    for j in 0..4 {
                        let m = 1u8 << (4 * half + j);
                        for h in 0..2 {
                            let dl = d_all * sc[8 * half + 2 * j + h] as f32;
                            for l in 16 * h..16 * h + 16 {
                                let v = ((q[l] >> (2 * j)) & 3) as i32
                                    - if hm[l] & m != 0 { 0 } else { 4 };
                                y[i] = dl * v as f32;
                                i += 1;
                            }
                        }
                    }
                }
            }
            WeightFormat::Q4K | WeightFormat::Q5K => {
                let (d, dmin) = (f16_to_f32(b), f16_to_f32(&b[2..]));
                let five = format == WeightFormat::Q5K;
                let (qh, qs) = if five {
                    (&b[16..48], &b[48..176])
                } else {
                    (&b[0..0], &b[16..144])
                };
                for c in 0..8 {
                    let (sc, m) = scale_min_k4(c, &b[4..16]);
                    let (d1, m1) = (d * sc as f32, dmin * m as f32);
                    for l in 0..32 {
                        let byte = qs[32 * (c / 2) + l];
                        let mut q = if c % 2 == 0 { byte & 0xF } else { byte >> 4 };
                        if five && qh[l] & (1 << c) != 0 {
                            q += 16;
                        }
                        y[32 * c + l] = d1 * q as f32 - m1;
                    }
                }
            }
            WeightFormat::Q6K => {
                let d = f16_to_f32(&b[208..]);
                for half in 0..2 {
                    let (ql, qh) = (&b[64 * half..], &b[128 + 32 * half..]);
                    let sc = &b[192 + 8 * half..];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        let y = &mut y[128 * half..];
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
            }
            WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 | WeightFormat::Mm(_) => {
                unreachable!()
            }
        }
    }
    Ok(())
}
