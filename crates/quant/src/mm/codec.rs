//! Scalar element codecs of the metal-marlin formats: FP8 E4M3 / E5M2,
//! FP4 E2M1, the E8M0 shared exponent of MXFP4, the NF4 levels, and the
//! round-up-to-F16 rule for group scales. Each is specified in
//! docs/FORMAT.md; encoders round to nearest, ties to even, and saturate.

use std::sync::LazyLock;

use half::f16;

/// QLoRA's 16 NormalFloat levels (bitsandbytes' `NF4` table); code `i` is
/// `NF4_LEVELS[i]`, code 7 is exactly zero.
pub const NF4_LEVELS: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// Decision thresholds of the NF4 encoder: the midpoints between adjacent
/// levels. A value `v` gets the code `#{t in NF4_MIDPOINTS : v >= t}`.
pub static NF4_MIDPOINTS: LazyLock<[f32; 15]> =
    LazyLock::new(|| std::array::from_fn(|i| (NF4_LEVELS[i] + NF4_LEVELS[i + 1]) * 0.5));

/// Largest finite FP8 E4M3 magnitude.
pub const E4M3_MAX: f32 = 448.0;
/// Largest finite FP8 E5M2 magnitude.
pub const E5M2_MAX: f32 = 57344.0;
/// Largest FP4 E2M1 magnitude.
pub const E2M1_MAX: f32 = 6.0;
/// The E2M1 magnitudes of codes 0..8 (code 8..16 are their negatives).
pub const E2M1_VALUES: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
/// Largest power-of-two exponent of E2M1 (6 = 1.5·2²), the `emax_elem` of
/// the OCP MX scale rule.
pub const E2M1_EMAX: i32 = 2;

/// A small float format without infinities used by the encoders.
struct Mini {
    /// Mantissa bits.
    mbits: u32,
    /// Exponent of the smallest normal number (unbiased), `1 - bias`.
    emin: i32,
    /// Exponent bias.
    bias: i32,
    /// Code of the largest finite magnitude (sign bit clear).
    max_code: u8,
    /// Largest finite magnitude.
    max: f32,
    /// Position of the sign bit.
    sign_shift: u32,
}

const E4M3: Mini = Mini {
    mbits: 3,
    emin: -6,
    bias: 7,
    max_code: 0x7E,
    max: E4M3_MAX,
    sign_shift: 7,
};
const E5M2: Mini = Mini {
    mbits: 2,
    emin: -14,
    bias: 15,
    max_code: 0x7B,
    max: E5M2_MAX,
    sign_shift: 7,
};
const E2M1: Mini = Mini {
    mbits: 1,
    emin: 0,
    bias: 1,
    max_code: 0x7,
    max: E2M1_MAX,
    sign_shift: 3,
};

/// floor(log2(a)) of a finite positive f32, exactly (subnormals included).
#[inline]
pub fn floor_log2(a: f32) -> i32 {
    let bits = a.to_bits() & 0x7FFF_FFFF;
    let e = (bits >> 23) as i32;
    if e == 0 {
        (31 - bits.leading_zeros() as i32) - 149
    } else {
        e - 127
    }
}

/// Rounds to the nearest integer, ties to even, exactly like
/// `f32::round_ties_even` but without a libm call on targets lacking a
/// rounding instruction: adding and subtracting 2^23 to a magnitude below
/// 2^23 rounds in the FPU's round-to-nearest-even mode (the sum lies in
/// [2^23, 2^24), where the spacing of f32 is 1); larger floats are integers.
#[inline(always)]
pub fn round_even(v: f32) -> f32 {
    const TWO23: f32 = 8_388_608.0;
    let a = v.abs();
    if a < TWO23 {
        ((a + TWO23) - TWO23).copysign(v)
    } else {
        v
    }
}

/// 2^e as f32 for e in [-149, 127].
#[inline]
fn pow2(e: i32) -> f32 {
    if e >= -126 {
        f32::from_bits(((e + 127) as u32) << 23)
    } else {
        f32::from_bits(1u32 << (e + 149))
    }
}

/// Encodes a finite non-negative magnitude: round to nearest even, saturate.
#[inline]
fn encode_mag(a: f32, m: &Mini) -> u8 {
    if a >= m.max {
        return m.max_code;
    }
    if a == 0.0 {
        return 0;
    }
    let mut e = floor_log2(a).max(m.emin);
    // a / 2^(e - mbits) is exact: a power-of-two scaling into [0, 2^(mbits+1)).
    let mut q = round_even(a * pow2(m.mbits as i32 - e)) as u32;
    if q == 0 {
        return 0;
    }
    if q >= 2 << m.mbits {
        // Rounded up into the next binade.
        q >>= 1;
        e += 1;
    }
    if q < 1 << m.mbits {
        // Subnormal (only possible at e == emin).
        return q as u8;
    }
    let code = (((e + m.bias) as u32) << m.mbits) | (q - (1 << m.mbits));
    (code as u8).min(m.max_code)
}

#[inline]
fn encode(x: f32, m: &Mini, nan_code: u8) -> u8 {
    let sign = ((x.to_bits() >> 31) as u8) << m.sign_shift;
    if x.is_nan() {
        return nan_code | sign;
    }
    sign | encode_mag(x.abs(), m)
}

/// FP8 E4M3 ("fn") code of `x`: round to nearest even; magnitudes beyond 448
/// (infinities included) saturate to ±448 (0x7E/0xFE); NaN → 0x7F (sign kept).
#[inline]
pub fn f32_to_e4m3(x: f32) -> u8 {
    encode(x, &E4M3, 0x7F)
}

/// FP8 E5M2 code of `x`: round to nearest even; magnitudes beyond 57344
/// (infinities included) saturate to ±57344 (0x7B/0xFB); NaN → 0x7F (sign kept).
#[inline]
pub fn f32_to_e5m2(x: f32) -> u8 {
    encode(x, &E5M2, 0x7F)
}

/// FP4 E2M1 code (4 bits, sign in bit 3) of `x`: round to nearest even;
/// magnitudes beyond 6 saturate to ±6. E2M1 has no NaN: NaN encodes as +0
/// (quantizers reject non-finite inputs before encoding).
#[inline]
pub fn f32_to_e2m1(x: f32) -> u8 {
    if x.is_nan() {
        return 0;
    }
    encode(x, &E2M1, 0)
}

fn e4m3_decode(c: u8) -> f32 {
    let s = if c & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((c >> 3) & 0xF) as i32;
    let m = (c & 7) as f32;
    if e == 0xF && c & 7 == 7 {
        return f32::NAN;
    }
    s * if e == 0 {
        m * pow2(-9)
    } else {
        (1.0 + m / 8.0) * pow2(e - 7)
    }
}

fn e5m2_decode(c: u8) -> f32 {
    let s = if c & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((c >> 2) & 0x1F) as i32;
    let m = (c & 3) as f32;
    if e == 0x1F {
        return if c & 3 == 0 {
            s * f32::INFINITY
        } else {
            f32::NAN
        };
    }
    s * if e == 0 {
        m * pow2(-16)
    } else {
        (1.0 + m / 4.0) * pow2(e - 15)
    }
}

/// Values of all 256 FP8 E4M3 codes.
pub static E4M3_TABLE: LazyLock<[f32; 256]> =
    LazyLock::new(|| std::array::from_fn(|c| e4m3_decode(c as u8)));
/// Values of all 256 FP8 E5M2 codes.
pub static E5M2_TABLE: LazyLock<[f32; 256]> =
    LazyLock::new(|| std::array::from_fn(|c| e5m2_decode(c as u8)));

/// Value of an FP8 E4M3 code (0x7F/0xFF are NaN).
#[inline]
pub fn e4m3_to_f32(c: u8) -> f32 {
    E4M3_TABLE[c as usize]
}

/// Value of an FP8 E5M2 code.
#[inline]
pub fn e5m2_to_f32(c: u8) -> f32 {
    E5M2_TABLE[c as usize]
}

/// Value of an FP4 E2M1 code (low 4 bits of `c`).
#[inline]
pub fn e2m1_to_f32(c: u8) -> f32 {
    let v = E2M1_VALUES[(c & 7) as usize];
    if c & 8 != 0 {
        -v
    } else {
        v
    }
}

/// Value of an E8M0 scale byte: 2^(c - 127); 0xFF is NaN; 0x00 is 2^-127.
#[inline]
pub fn e8m0_to_f32(c: u8) -> f32 {
    if c == 0xFF {
        f32::NAN
    } else {
        pow2(c as i32 - 127)
    }
}

/// The MXFP4 shared-exponent byte of a group with absolute maximum `absmax`
/// (OCP MX v1.0): `floor(log2(absmax)) - 2`, clamped to the E8M0 range
/// [-127, 127], biased by 127. A zero group gets 0x00 (2^-127).
#[inline]
pub fn mxfp4_scale_exponent(absmax: f32) -> u8 {
    if absmax == 0.0 || !absmax.is_finite() {
        // Zero group: any scale decodes it exactly; use the clamp of -inf.
        // (Non-finite inputs are rejected by the quantizer.)
        return 0;
    }
    let e = (floor_log2(absmax) - E2M1_EMAX).clamp(-127, 127);
    (e + 127) as u8
}

/// Multiplies `x` by 2^-(`e8m0` - 127) exactly (for finite results).
#[inline]
pub fn mx_unscale(x: f32, e8m0: u8) -> f32 {
    let e = e8m0 as i32 - 127;
    (x as f64 * 2f64.powi(-e)) as f32
}

/// NF4 code of a value normalised to [-1, 1]: the nearest level; a value
/// exactly between two levels gets the upper one.
#[inline]
pub fn nf4_code(v: f32) -> u8 {
    let t = &*NF4_MIDPOINTS;
    // Branch-free count of thresholds not above v.
    t.iter().map(|&m| (v >= m) as u8).sum()
}

/// `s` rounded to F16 toward +infinity, so that `|x| / scale` never exceeds
/// the format's largest code. `None` when `s` does not fit an F16 (> 65504).
#[inline]
pub fn f16_scale_up(s: f32) -> Option<f16> {
    let h = f16::from_f32(s);
    let h = if h.to_f32() < s {
        f16::from_bits(h.to_bits() + 1)
    } else {
        h
    };
    h.is_finite().then_some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_known_codes() {
        assert_eq!(f32_to_e4m3(448.0), 0x7E);
        assert_eq!(f32_to_e4m3(-448.0), 0xFE);
        assert_eq!(f32_to_e4m3(1.0), 0x38);
        assert_eq!(f32_to_e4m3(-2.0), 0xC0);
        assert_eq!(f32_to_e4m3(0.0), 0x00);
        assert_eq!(f32_to_e4m3(-0.0), 0x80);
        // Denormals: m · 2^-9.
        assert_eq!(f32_to_e4m3(2f32.powi(-9)), 0x01);
        assert_eq!(f32_to_e4m3(7.0 * 2f32.powi(-9)), 0x07);
        assert_eq!(f32_to_e4m3(2f32.powi(-6)), 0x08); // min normal
                                                      // Half the smallest denormal ties to even (0); slightly above rounds up.
        assert_eq!(f32_to_e4m3(2f32.powi(-10)), 0x00);
        assert_eq!(f32_to_e4m3(2f32.powi(-10) * 1.01), 0x01);
        // 1.5 · 2^-9 ties to 2 · 2^-9 (even mantissa).
        assert_eq!(f32_to_e4m3(1.5 * 2f32.powi(-9)), 0x02);
        // Denormal rounding up into the first normal.
        assert_eq!(f32_to_e4m3(7.6 * 2f32.powi(-9)), 0x08);
        // Ties to even in the normal range: 1 + 1/16 → 1.0, 1 + 3/16 → 1.25.
        assert_eq!(f32_to_e4m3(1.0625), 0x38);
        assert_eq!(f32_to_e4m3(1.1875), 0x3A);
        // Saturation (no infinities): 464 would tie up to 480 (the NaN slot).
        assert_eq!(f32_to_e4m3(464.0), 0x7E);
        assert_eq!(f32_to_e4m3(1e9), 0x7E);
        assert_eq!(f32_to_e4m3(f32::INFINITY), 0x7E);
        assert_eq!(f32_to_e4m3(f32::NEG_INFINITY), 0xFE);
        assert_eq!(f32_to_e4m3(f32::NAN), 0x7F);
        assert!(e4m3_to_f32(0x7F).is_nan() && e4m3_to_f32(0xFF).is_nan());
        assert_eq!(e4m3_to_f32(0x7E), 448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(e4m3_to_f32(0x78), 256.0); // S.1111.000 is a number
    }

    #[test]
    fn e5m2_known_codes() {
        assert_eq!(f32_to_e5m2(57344.0), 0x7B);
        assert_eq!(f32_to_e5m2(1.0), 0x3C);
        assert_eq!(f32_to_e5m2(2f32.powi(-16)), 0x01);
        assert_eq!(f32_to_e5m2(2f32.powi(-14)), 0x04);
        assert_eq!(f32_to_e5m2(1e6), 0x7B);
        assert_eq!(f32_to_e5m2(f32::NEG_INFINITY), 0xFB);
        assert!(e5m2_to_f32(f32_to_e5m2(f32::NAN)).is_nan());
        assert_eq!(e5m2_to_f32(0x7C), f32::INFINITY);
        assert_eq!(e5m2_to_f32(0x7B), 57344.0);
        assert_eq!(e5m2_to_f32(0x01), 2f32.powi(-16));
    }

    #[test]
    fn fp8_encode_decode_all_codes() {
        for c in 0..=255u8 {
            let v = e4m3_to_f32(c);
            if !v.is_nan() {
                assert_eq!(f32_to_e4m3(v), c, "e4m3 {c:#x} = {v}");
            }
            let v = e5m2_to_f32(c);
            if v.is_finite() {
                assert_eq!(f32_to_e5m2(v), c, "e5m2 {c:#x} = {v}");
            }
        }
    }

    #[test]
    fn e2m1_codes() {
        for c in 0..16u8 {
            assert_eq!(f32_to_e2m1(e2m1_to_f32(c)), c);
        }
        // Ties to even mantissa.
        let cases = [
            (0.25, 0.0),
            (0.75, 1.0),
            (1.25, 1.0),
            (1.75, 2.0),
            (2.5, 2.0),
            (3.5, 4.0),
            (5.0, 4.0),
            (5.01, 6.0),
            (7.0, 6.0),
            (1e30, 6.0),
        ];
        for (x, want) in cases {
            assert_eq!(e2m1_to_f32(f32_to_e2m1(x)), want, "{x}");
            assert_eq!(e2m1_to_f32(f32_to_e2m1(-x)), -want, "-{x}");
        }
    }

    #[test]
    fn e8m0_exponent_choice() {
        assert_eq!(mxfp4_scale_exponent(6.0), 127); // floor(log2 6) = 2 → 2^0
        assert_eq!(mxfp4_scale_exponent(4.0), 127);
        assert_eq!(mxfp4_scale_exponent(3.99), 126);
        assert_eq!(mxfp4_scale_exponent(8.0), 128);
        assert_eq!(mxfp4_scale_exponent(1.0), 125);
        assert_eq!(mxfp4_scale_exponent(0.0), 0);
        assert_eq!(mxfp4_scale_exponent(1e-40), 0); // clamped at 2^-127
        assert_eq!(mxfp4_scale_exponent(f32::MAX), 127 + 125);
        assert_eq!(e8m0_to_f32(127), 1.0);
        assert_eq!(e8m0_to_f32(0), 2f32.powi(-127));
        assert_eq!(e8m0_to_f32(254), 2f32.powi(127));
        assert!(e8m0_to_f32(255).is_nan());
        assert_eq!(mx_unscale(12.0, 128), 6.0);
    }

    #[test]
    fn round_even_matches_std() {
        for v in [
            0.5f32,
            1.5,
            2.5,
            -0.5,
            -1.5,
            -2.5,
            3.49,
            4194303.5,
            4194304.5,
            8388607.5,
            -8388607.5,
            8388608.0,
            1e9,
            -7.5,
            0.49999997,
            -0.0,
            f32::NAN,
        ] {
            assert_eq!(
                round_even(v).to_bits(),
                v.round_ties_even().to_bits(),
                "{v}"
            );
        }
        for i in -100_000..100_000 {
            let v = i as f32 * 0.173;
            assert_eq!(
                round_even(v).to_bits(),
                v.round_ties_even().to_bits(),
                "{v}"
            );
        }
    }

    #[test]
    fn floor_log2_exact() {
        for (x, e) in [
            (1.0f32, 0),
            (1.999, 0),
            (2.0, 1),
            (0.75, -1),
            (f32::MIN_POSITIVE, -126),
            (1e-45, -149),
            (3e-39, -128),
            (2.5e-39, -129),
        ] {
            assert_eq!(floor_log2(x), e, "{x}");
        }
    }

    #[test]
    fn nf4_nearest() {
        for (i, &l) in NF4_LEVELS.iter().enumerate() {
            assert_eq!(nf4_code(l) as usize, i);
        }
        assert_eq!(nf4_code(0.0), 7);
        assert_eq!(nf4_code(-0.0), 7);
        assert_eq!(nf4_code(0.039), 7);
        assert_eq!(nf4_code(0.041), 8);
    }

    #[test]
    fn scale_rounds_up() {
        let s = 1.0f32 / 3.0;
        let h = f16_scale_up(s).unwrap().to_f32();
        assert!(h >= s && h - s < s * 2f32.powi(-10));
        assert_eq!(f16_scale_up(0.5).unwrap().to_f32(), 0.5);
        assert!(f16_scale_up(1e-12).unwrap().to_f32() > 0.0);
        assert!(f16_scale_up(70000.0).is_none());
        assert_eq!(f16_scale_up(65504.0).unwrap().to_f32(), 65504.0);
    }
}
