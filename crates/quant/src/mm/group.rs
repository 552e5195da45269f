//! One scale group's quantizer as a value: the scale (and zero-point) that
//! round-to-nearest picks for a group's values, and the element codec under
//! that scale.
//!
//! Error-compensating quantizers (GPTQ) fix a group's parameters once and
//! then encode values one at a time, after earlier columns' rounding errors
//! have changed them. [`GroupQuantizer::fit`] computes exactly the parameters
//! [`quantize_mm_row`](super::quantize_mm_row) stores for the same values,
//! and [`GroupQuantizer::encode`] / [`GroupQuantizer::decode`] are exactly
//! its code mapping and the decoders' value (docs/FORMAT.md §4), so a code
//! chosen here is a valid code of the format and decodes to the same f32
//! that [`dequantize_mm_row`](super::dequantize_mm_row) produces. Values
//! outside the fitted range clip or saturate as the format prescribes.

use half::f16;
use mm_core::weight::MmKind;
use mm_core::{Error, Result};

use super::codec::{
    e8m0_to_f32, f16_scale_up, f32_to_e2m1, f32_to_e4m3, f32_to_e5m2, mx_unscale,
    mxfp4_scale_exponent, nf4_code, round_even, E2M1_MAX, E4M3_MAX, E5M2_MAX,
};
use super::dequantize::decode;

/// The quantization parameters of one group and its element codec.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupQuantizer {
    kind: MmKind,
    /// The stored scale's value (2^e for MXFP4).
    scale: f32,
    /// The stored scale: F16 bits, or the E8M0 byte for MXFP4.
    scale_bits: u16,
    /// Zero-point (asymmetric integers; 0 otherwise).
    zero: u8,
}

impl GroupQuantizer {
    /// The parameters round-to-nearest stores for a group holding `x`.
    /// Errors on a non-finite value and on a scale beyond the largest F16.
    pub fn fit(kind: MmKind, x: &[f32]) -> Result<Self> {
        kind.validate()?;
        if kind.is_trellis() {
            return Err(Error::Invalid(format!(
                "{}: a trellis format has no per-group parameters (it is searched tile by tile)",
                kind.name()
            )));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "{}: element {i} of the group is the non-finite value {}",
                kind.name(),
                x[i]
            )));
        }
        let q = |scale_bits: u16, scale: f32, zero: u8| Self {
            kind,
            scale,
            scale_bits,
            zero,
        };
        let f16_of = |num: f32, den: f32| -> Result<(u16, f32)> {
            if num == 0.0 {
                return Ok((f16::ZERO.to_bits(), 0.0));
            }
            let s = f16_scale_up(num / den).ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: range {num} needs a scale of {}, beyond the largest F16 (65504)",
                    kind.name(),
                    num / den
                ))
            })?;
            Ok((s.to_bits(), s.to_f32()))
        };
        let absmax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        Ok(match kind {
            MmKind::IntSym(b) => {
                let qmax = (1i32 << (b - 1)) - 1;
                let (bits, s) = f16_of(absmax, qmax as f32)?;
                q(bits, s, 0)
            }
            MmKind::Trellis(_) => unreachable!("refused above"),
            MmKind::IntAsym(b) => {
                let qmax = ((1u32 << b) - 1) as f32;
                let (mn, mx) = x
                    .iter()
                    .fold((0f32, 0f32), |(mn, mx), &v| (mn.min(v), mx.max(v)));
                let (bits, s) = f16_of(mx - mn, qmax)?;
                let z = if s == 0.0 {
                    0
                } else {
                    round_even(-mn / s).clamp(0.0, qmax) as u8
                };
                q(bits, s, z)
            }
            MmKind::Nf4 => {
                let (bits, s) = f16_of(absmax, 1.0)?;
                q(bits, s, 0)
            }
            MmKind::Fp8E4M3 => {
                let (bits, s) = f16_of(absmax, E4M3_MAX)?;
                q(bits, s, 0)
            }
            MmKind::Fp8E5M2 => {
                let (bits, s) = f16_of(absmax, E5M2_MAX)?;
                q(bits, s, 0)
            }
            MmKind::Fp4E2M1 => {
                let (bits, s) = f16_of(absmax, E2M1_MAX)?;
                q(bits, s, 0)
            }
            MmKind::Mxfp4 => {
                let e = mxfp4_scale_exponent(absmax);
                q(e as u16, e8m0_to_f32(e), 0)
            }
        })
    }

    /// Parameters from their stored form: F16 scale bits (the E8M0 byte for
    /// MXFP4) and zero-point (0 for formats without one).
    pub fn from_parts(kind: MmKind, scale_bits: u16, zero: u8) -> Self {
        let scale = match kind {
            MmKind::Mxfp4 => e8m0_to_f32(scale_bits as u8),
            _ => f16::from_bits(scale_bits).to_f32(),
        };
        Self {
            kind,
            scale,
            scale_bits,
            zero,
        }
    }

    pub fn kind(&self) -> MmKind {
        self.kind
    }

    /// The stored scale's bits: F16, or the E8M0 byte for MXFP4.
    pub fn scale_bits(&self) -> u16 {
        self.scale_bits
    }

    /// The stored scale's value (2^e for MXFP4).
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The zero-point (0 for formats without one).
    pub fn zero(&self) -> u8 {
        self.zero
    }

    /// Writes the stored scale: 2 bytes (F16 LE), or 1 byte (E8M0) for MXFP4.
    pub fn write_scale(&self, out: &mut [u8]) {
        match self.kind {
            MmKind::Mxfp4 => out[0] = self.scale_bits as u8,
            _ => out.copy_from_slice(&self.scale_bits.to_le_bytes()),
        }
    }

    /// The code of `v` under these parameters: round to nearest as in
    /// docs/FORMAT.md §4, clipping (integers) or saturating (float codes)
    /// values beyond the fitted range. `v` must be finite.
    #[inline]
    pub fn encode(&self, v: f32) -> u8 {
        let s = self.scale;
        match self.kind {
            MmKind::Trellis(_) => unreachable!("`fit` builds no quantizer for trellis formats"),
            MmKind::IntSym(b) => {
                let off = 1i32 << (b - 1);
                if s == 0.0 {
                    return off as u8;
                }
                let lim = (off - 1) as f32;
                (round_even(v / s).clamp(-lim, lim) as i32 + off) as u8
            }
            MmKind::IntAsym(b) => {
                if s == 0.0 {
                    return 0;
                }
                let qmax = ((1u32 << b) - 1) as f32;
                (round_even(v / s) + self.zero as f32).clamp(0.0, qmax) as u8
            }
            MmKind::Nf4 => {
                if s == 0.0 {
                    7
                } else {
                    nf4_code(v / s)
                }
            }
            MmKind::Fp8E4M3 => {
                if s == 0.0 {
                    0
                } else {
                    f32_to_e4m3(v / s)
                }
            }
            MmKind::Fp8E5M2 => {
                if s == 0.0 {
                    0
                } else {
                    f32_to_e5m2(v / s)
                }
            }
            MmKind::Fp4E2M1 => {
                if s == 0.0 {
                    0
                } else {
                    f32_to_e2m1(v / s)
                }
            }
            MmKind::Mxfp4 => f32_to_e2m1(mx_unscale(v, self.scale_bits as u8)),
        }
    }

    /// The value `code` decodes to in this group, exactly as the decoders
    /// compute it (`v(code) × scale` in f32).
    #[inline]
    pub fn decode(&self, code: u8) -> f32 {
        decode(self.kind, code, self.zero) * self.scale
    }

    /// `(code, decoded value)` of `v`.
    #[inline]
    pub fn quantize(&self, v: f32) -> (u8, f32) {
        let c = self.encode(v);
        (c, self.decode(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::{dequantize_mm_row, pack_codes, quantize_mm_row, MmFormat};

    /// A deterministic xorshift generator (no test-only dependency needed).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    /// Rows with varied groups: normal-ish, one-signed, all zero, tiny, with outliers.
    fn rows(cols: usize) -> Vec<Vec<f32>> {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut out = Vec::new();
        for kind in 0..7 {
            let row: Vec<f32> = (0..cols)
                .map(|i| {
                    let u = rng.next() - 0.5;
                    match kind {
                        0 => u,
                        1 => u.abs() * 3.0 + 0.1,
                        2 => -u.abs() * 1e-3,
                        3 => 0.0,
                        4 => u * 1e-6,
                        5 => {
                            if i % 37 == 0 {
                                u * 100.0
                            } else {
                                u * 0.01
                            }
                        }
                        _ => (u * 8.0).round() / 8.0,
                    }
                })
                .collect();
            out.push(row);
        }
        out
    }

    #[test]
    fn fit_and_encode_match_rtn_bit_for_bit() {
        let cols = 256;
        for fmt in MmFormat::all() {
            let gl = fmt.group_len(cols);
            let groups = fmt.groups_per_row(cols);
            for row in rows(cols) {
                let mut codes = vec![0u8; fmt.code_bytes(cols)];
                let mut scales = vec![0u8; groups * fmt.scale_bytes()];
                let mut zeros = fmt.kind.has_zeros().then(|| vec![0u8; groups]);
                quantize_mm_row(fmt, &row, &mut codes, &mut scales, zeros.as_deref_mut()).unwrap();
                let mut want = vec![0f32; cols];
                dequantize_mm_row(fmt, &codes, &scales, zeros.as_deref(), &mut want).unwrap();

                let mut my_codes = vec![0u8; cols];
                let mut my_scales = vec![0u8; groups * fmt.scale_bytes()];
                let mut my_zeros = vec![0u8; groups];
                let mut got = vec![0f32; cols];
                for g in 0..groups {
                    let x = &row[g * gl..(g + 1) * gl];
                    let q = GroupQuantizer::fit(fmt.kind, x).unwrap();
                    let sb = fmt.scale_bytes();
                    q.write_scale(&mut my_scales[g * sb..(g + 1) * sb]);
                    my_zeros[g] = q.zero();
                    for (i, &v) in x.iter().enumerate() {
                        let (c, d) = q.quantize(v);
                        my_codes[g * gl + i] = c;
                        got[g * gl + i] = d;
                    }
                }
                let mut packed = vec![0u8; fmt.code_bytes(cols)];
                pack_codes(fmt.bits(), &my_codes, &mut packed).unwrap();
                assert_eq!(packed, codes, "{fmt}: codes");
                assert_eq!(my_scales, scales, "{fmt}: scales");
                if let Some(z) = &zeros {
                    assert_eq!(&my_zeros, z, "{fmt}: zeros");
                }
                for (a, b) in got.iter().zip(&want) {
                    assert_eq!(a.to_bits(), b.to_bits(), "{fmt}: decoded values");
                }
            }
        }
    }

    #[test]
    fn out_of_range_values_clip_or_saturate() {
        let x = [0.5f32, -0.25, 1.0, 0.0];
        for kind in MmKind::ALL {
            let q = GroupQuantizer::fit(kind, &x).unwrap();
            // Far beyond the fitted range: the largest representable magnitude.
            let hi = q.decode(q.encode(1e6));
            let lo = q.decode(q.encode(-1e6));
            assert!(hi > 0.0 && hi.is_finite(), "{kind:?}: {hi}");
            assert!(lo < 0.0 || kind.has_zeros(), "{kind:?}: {lo}");
            assert!(hi >= q.decode(q.encode(1.0)), "{kind:?}");
        }
        let q = GroupQuantizer::fit(MmKind::IntSym(4), &[0.0; 8]).unwrap();
        assert_eq!((q.scale(), q.quantize(3.0)), (0.0, (8, 0.0)));
    }

    #[test]
    fn errors() {
        let e = GroupQuantizer::fit(MmKind::IntSym(4), &[1.0, f32::NAN])
            .unwrap_err()
            .to_string();
        assert!(e.contains("non-finite"), "{e}");
        let e = GroupQuantizer::fit(MmKind::IntSym(8), &[1e9])
            .unwrap_err()
            .to_string();
        assert!(e.contains("65504"), "{e}");
        assert!(GroupQuantizer::fit(MmKind::IntSym(5), &[1.0]).is_err());
    }
}
