//! Scale search: a group's parameters chosen to minimize its weighted
//! squared rounding error `Σ wᵢ·(xᵢ − x̂ᵢ)²`, instead of the range-covering
//! scale round-to-nearest stores ([`GroupQuantizer::fit`]).
//!
//! Why: with 4, 8 or 16 levels, a scale that covers the group's extremes
//! spends most of its resolution on one or two values; clipping them lowers
//! the error of all the others. Peers do the same: the GPTQ reference's
//! `mse` quantizer (a grid of range shrinks), llama.cpp's K-quant fitting
//! (a grid plus least-squares refits), AWQ's clip search.
//!
//! Strategy, per group:
//! 1. candidates shrink the min/max range by `p ∈ {1, 0.98, …, 0.40}`
//!    (both ends toward zero for asymmetric formats, as the GPTQ
//!    reference), each scale rounded up to F16 as stored; MXFP4 tries its
//!    range's exponent and the two below;
//! 2. the best candidate's scale is refitted by weighted least squares for
//!    its codes (`s = Σ w·x·c / Σ w·c²`, `c` the unscaled code values), and
//!    asymmetric formats also try the zero-points one step either side,
//!    each refitted; codes are re-chosen after every refit;
//! 3. the lowest weighted error wins. Min/max (`p = 1`) is a candidate, so
//!    the result is never worse than [`GroupQuantizer::fit`] on the error
//!    it measures.
//!
//! The weights `w` are how much each column's error costs: the diagonal
//! of the GPTQ Hessian (`E[xⱼ²]` of the layer's inputs), or all ones.
//! FP8 formats, whose codes are already dense over the range, keep min/max.

use half::f16;
use mm_core::weight::MmKind;
use mm_core::Result;

use super::codec::{e8m0_to_f32, mxfp4_scale_exponent};
use super::dequantize::decode;
use super::group::GroupQuantizer;

/// How a quantizer picks each group's scale (and zero-point).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScaleSearch {
    /// Cover the group's range: the round-to-nearest reference rule.
    #[default]
    MinMax,
    /// Minimize the group's weighted squared error (this module).
    Mse,
}

impl ScaleSearch {
    pub fn name(self) -> &'static str {
        match self {
            Self::MinMax => "minmax",
            Self::Mse => "mse",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "minmax" => Some(Self::MinMax),
            "mse" => Some(Self::Mse),
            _ => None,
        }
    }

    /// The parameters this rule picks for a group holding `x`, whose
    /// columns' errors weigh `w` (ones when `None`; same length as `x`).
    pub fn fit(self, kind: MmKind, x: &[f32], w: Option<&[f32]>) -> Result<GroupQuantizer> {
        match self {
            Self::MinMax => GroupQuantizer::fit(kind, x),
            Self::Mse => search(kind, x, w),
        }
    }
}

/// Range shrinks tried by the search: 1.00, 0.98, …, 0.40.
const SHRINK_STEPS: usize = 31;

fn shrink(i: usize) -> f32 {
    1.0 - 0.02 * i as f32
}

/// `Σ w·(x − x̂)²` of the group under `q`.
fn error(q: &GroupQuantizer, x: &[f32], w: Option<&[f32]>) -> f64 {
    let mut e = 0f64;
    for (i, &v) in x.iter().enumerate() {
        let d = (v - q.decode(q.encode(v))) as f64;
        e += w.map_or(1.0, |w| w[i] as f64) * d * d;
    }
    e
}

/// The scale minimizing `Σ w·(x − s·c)²` for the codes `q` currently picks.
fn refit_scale(q: &GroupQuantizer, x: &[f32], w: Option<&[f32]>) -> Option<f16> {
    let (mut num, mut den) = (0f64, 0f64);
    for (i, &v) in x.iter().enumerate() {
        let c = decode(q.kind(), q.encode(v), q.zero()) as f64;
        let wi = w.map_or(1.0, |w| w[i] as f64);
        num += wi * v as f64 * c;
        den += wi * c * c;
    }
    let s = f16::from_f64(num / den);
    (den > 0.0 && s.is_finite() && s.to_f32() > 0.0).then_some(s)
}

/// [`ScaleSearch::Mse`]'s parameters for a group holding `x`.
fn search(kind: MmKind, x: &[f32], w: Option<&[f32]>) -> Result<GroupQuantizer> {
    let base = GroupQuantizer::fit(kind, x)?;
    if base.scale() == 0.0 || matches!(kind, MmKind::Fp8E4M3 | MmKind::Fp8E5M2) {
        return Ok(base);
    }
    let mut best = (error(&base, x, w), base);
    let consider = |q: GroupQuantizer, best: &mut (f64, GroupQuantizer)| {
        let e = error(&q, x, w);
        if e < best.0 {
            *best = (e, q);
        }
    };
    if kind == MmKind::Mxfp4 {
        let e = mxfp4_scale_exponent(x.iter().fold(0f32, |m, v| m.max(v.abs())));
        for d in 1..=2u8 {
            if e >= d {
                let q = GroupQuantizer::from_parts(kind, (e - d) as u16, 0);
                debug_assert_eq!(q.scale(), e8m0_to_f32(e - d));
                consider(q, &mut best);
            }
        }
        return Ok(best.1);
    }
    let mut shrunk = vec![0f32; x.len()];
    for i in 1..SHRINK_STEPS {
        // The fit depends only on the extremes: scaling every value by `p`
        // shrinks the range toward zero.
        for (s, v) in shrunk.iter_mut().zip(x) {
            *s = v * shrink(i);
        }
        consider(GroupQuantizer::fit(kind, &shrunk)?, &mut best);
    }
    // Least-squares refits of the winner, and its neighbouring zero-points.
    let mut starts = vec![best.1];
    if let MmKind::IntAsym(b) = kind {
        let z = best.1.zero();
        let qmax = ((1u16 << b) - 1) as u8;
        for z2 in [z.checked_sub(1), z.checked_add(1).filter(|&v| v <= qmax)]
            .into_iter()
            .flatten()
        {
            starts.push(GroupQuantizer::from_parts(kind, best.1.scale_bits(), z2));
        }
    }
    for mut q in starts {
        consider(q, &mut best);
        for _ in 0..2 {
            match refit_scale(&q, x, w) {
                Some(s) if s.to_bits() != q.scale_bits() => {
                    q = GroupQuantizer::from_parts(kind, s.to_bits(), q.zero());
                    consider(q, &mut best);
                }
                _ => break,
            }
        }
    }
    Ok(best.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::{quantize_rtn, quantize_rtn_with, MmFormat};
    use proptest::prelude::*;

    const KINDS: [MmKind; 10] = [
        MmKind::IntSym(2),
        MmKind::IntSym(3),
        MmKind::IntSym(4),
        MmKind::IntAsym(2),
        MmKind::IntAsym(3),
        MmKind::IntAsym(4),
        MmKind::Nf4,
        MmKind::Fp4E2M1,
        MmKind::Mxfp4,
        MmKind::IntSym(8),
    ];

    /// Gaussian-ish values (sum of uniforms) with an outlier.
    fn group(seed: u64, n: usize, outlier: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut u = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let mut v: Vec<f32> = (0..n).map(|_| (u() + u() + u() + u()) * 0.05).collect();
        v[n / 3] = outlier;
        v
    }

    #[test]
    fn clipping_an_outlier_lowers_the_error() {
        // One value at ~7σ: min/max spends the range on it; the search clips.
        for kind in [
            MmKind::IntSym(2),
            MmKind::IntSym(3),
            MmKind::IntAsym(2),
            MmKind::IntAsym(3),
            MmKind::Nf4,
            MmKind::Fp4E2M1,
        ] {
            let x = group(7, 64, 0.2);
            let mm = GroupQuantizer::fit(kind, &x).unwrap();
            let se = ScaleSearch::Mse.fit(kind, &x, None).unwrap();
            let (e0, e1) = (error(&mm, &x, None), error(&se, &x, None));
            assert!(
                e1 < 0.9 * e0,
                "{}: searched {e1:.3e} vs min/max {e0:.3e}",
                kind.name()
            );
            assert!(se.scale() < mm.scale(), "{}", kind.name());
        }
    }

    #[test]
    fn weights_steer_the_search() {
        // All the weight on the outlier: the search must keep it in range.
        let kind = MmKind::IntSym(3);
        let x = group(3, 32, 0.2);
        let mut w = vec![1e-3f32; 32];
        w[32 / 3] = 1.0;
        let plain = ScaleSearch::Mse.fit(kind, &x, None).unwrap();
        let steered = ScaleSearch::Mse.fit(kind, &x, Some(&w)).unwrap();
        let out = |q: &GroupQuantizer| (x[32 / 3] - q.decode(q.encode(x[32 / 3]))).abs();
        assert!(
            out(&steered) < 0.5 * out(&plain),
            "{} vs {}",
            out(&steered),
            out(&plain)
        );
        assert!(error(&steered, &x, Some(&w)) <= error(&plain, &x, Some(&w)));
    }

    #[test]
    fn min_max_rule_is_round_to_nearest() {
        let fmt = MmFormat::new(MmKind::IntAsym(3), 32).unwrap();
        let x: Vec<f32> = (0..4 * 96)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 70.0)
            .collect();
        assert_eq!(
            quantize_rtn_with(&x, 4, 96, fmt, ScaleSearch::MinMax).unwrap(),
            quantize_rtn(&x, 4, 96, fmt).unwrap()
        );
    }

    #[test]
    fn searched_weights_decode_to_the_searched_values() {
        // The stored parts decode exactly to the searched group's values.
        for kind in KINDS {
            let g = kind.fixed_group().unwrap_or(32);
            let fmt = MmFormat::new(kind, g).unwrap();
            let (rows, cols) = (3, 128);
            let x: Vec<f32> = (0..rows)
                .flat_map(|r| group(r as u64 + 11, cols, 0.3))
                .collect();
            let t = quantize_rtn_with(&x, rows, cols, fmt, ScaleSearch::Mse).unwrap();
            let d = t.dequantize().unwrap();
            for (r, (xr, dr)) in x.chunks(cols).zip(d.chunks(cols)).enumerate() {
                for (xg, dg) in xr.chunks(g as usize).zip(dr.chunks(g as usize)) {
                    let q = ScaleSearch::Mse.fit(kind, xg, None).unwrap();
                    let want: Vec<f32> = xg.iter().map(|&v| q.decode(q.encode(v))).collect();
                    assert_eq!(want, dg, "{} row {r}", kind.name());
                }
            }
        }
    }

    #[test]
    fn bad_values_are_refused() {
        let e = ScaleSearch::Mse
            .fit(MmKind::IntSym(4), &[1.0, f32::INFINITY], None)
            .unwrap_err();
        assert!(e.to_string().contains("non-finite"), "{e}");
        let z = ScaleSearch::Mse
            .fit(MmKind::IntAsym(2), &[0.0; 8], None)
            .unwrap();
        assert_eq!(
            z,
            GroupQuantizer::fit(MmKind::IntAsym(2), &[0.0; 8]).unwrap()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Never worse than min/max on the weighted error it minimizes.
        #[test]
        fn never_worse_than_min_max(
            ki in 0usize..10,
            seed in any::<u64>(),
            out in -1.0f32..1.0,
            shift in -0.2f32..0.2,
            weighted in any::<bool>(),
        ) {
            let kind = KINDS[ki];
            let x: Vec<f32> = group(seed, 32, out).iter().map(|v| v + shift).collect();
            let w: Vec<f32> = (0..32).map(|i| ((i * 7 + seed as usize) % 13) as f32 + 0.1).collect();
            let w = weighted.then_some(&w[..]);
            let mm = GroupQuantizer::fit(kind, &x).unwrap();
            let se = ScaleSearch::Mse.fit(kind, &x, w).unwrap();
            prop_assert!(error(&se, &x, w) <= error(&mm, &x, w));
        }
    }
}
