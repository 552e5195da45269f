//! Vectorized `exp` for the softmax of attention and the SiLU of SwiGLU.
//!
//! libm's `expf` is a call per element and does not vectorize; with it
//! these loops were 9% of a SmolLM2 prefill (`perf record`). [`exp`] is the classic
//! Cephes single-precision scheme, branch-free so the compiler vectorizes a
//! loop of it: `n = round(x·log2 e)`, `r = x − n·ln 2` (ln 2 split in two
//! for an exact product), `eʳ` by a degree-6 polynomial on |r| ≤ ln2/2,
//! and `2ⁿ` built in the exponent bits. Relative error ≤ 2 ulp on the
//! normal range; inputs are clamped to [−87.3, 88.7] (so `exp(−∞) = 0`
//! becomes ~1e-38, which no softmax or sigmoid can tell from 0; NaN
//! propagates). The slice functions run under AVX-512/AVX2+FMA where the
//! CPU has them (the same scalar body compiled wider), else as plain code.

/// `eˣ` (see the module docs for range and accuracy).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Selects rather than `clamp`/`as i32`, which do not vectorize (NaN
    // fails both comparisons and propagates).
    let x = if x < -87.336_55 { -87.336_55 } else { x };
    let x = if x > 88.722_83 { 88.722_83 } else { x };
    let n = (x * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 5e-1);
    let er = (p * r).mul_add(r, r) + 1.0;
    // 2ⁿ for n in [−126, 128]: split so each factor is a normal float; the
    // integer n is read from the mantissa of n + 1.5·2²³.
    let n = (n + 12_582_912.0).to_bits() as i32 - 0x4B40_0000;
    let h = n >> 1;
    let s1 = f32::from_bits(((h + 127) as u32) << 23);
    let s2 = f32::from_bits(((n - h + 127) as u32) << 23);
    er * s1 * s2
}

/// Runs `body` compiled for the widest vector unit this CPU has.
#[inline(always)]
pub(crate) fn dispatch<T>(body: impl FnOnce() -> T) -> T {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn v512<T>(f: impl FnOnce() -> T) -> T {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn v256<T>(f: impl FnOnce() -> T) -> T {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the features were detected on this CPU.
            return unsafe { v512(body) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { v256(body) };
        }
    }
    body()
}

/// `x ← exp(x − sub)` for every element; returns their sum.
pub fn exp_sub_sum(xs: &mut [f32], sub: f32) -> f32 {
    dispatch(
        #[inline(always)]
        || {
            let mut sum = [0.0f32; 16];
            let mut chunks = xs.chunks_exact_mut(16);
            for c in &mut chunks {
                for (v, s) in c.iter_mut().zip(sum.iter_mut()) {
                    *v = exp(*v - sub);
                    *s += *v;
                }
            }
            let mut tail = 0.0f32;
            for v in chunks.into_remainder() {
                *v = exp(*v - sub);
                tail += *v;
            }
            sum.iter().sum::<f32>() + tail
        },
    )
}

/// `out[i] = silu(gate[i]) · up[i]`, `silu(g) = g / (1 + e^(−g))`.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    dispatch(
        #[inline(always)]
        || {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = g / (1.0 + exp(-g)) * u;
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f64) -> f64 {
        let b32 = b as f32;
        let ulp = (f32::from_bits(b32.abs().to_bits() + 1) - b32.abs()) as f64;
        (a as f64 - b).abs() / ulp
    }

    #[test]
    fn exp_within_two_ulp_on_the_normal_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.5 {
            worst = worst.max(ulps(exp(x), (x as f64).exp()));
            x += 0.000_731;
        }
        assert!(worst <= 2.0, "max error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(100.0).is_finite() && exp(100.0) > 1e38);
    }

    #[test]
    fn slices_match_the_scalar_function() {
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.037).collect();
        let mut e = xs.clone();
        let sum = exp_sub_sum(&mut e, 1.5);
        let want: Vec<f32> = xs.iter().map(|&x| exp(x - 1.5)).collect();
        assert_eq!(e, want);
        let ws: f64 = want.iter().map(|&v| v as f64).sum();
        assert!((sum as f64 - ws).abs() < 1e-5 * ws);
        let up: Vec<f32> = (0..1000).map(|i| i as f32 * 0.01).collect();
        let mut out = vec![0.0; 1000];
        silu_mul(&xs, &up, &mut out);
        for ((o, &g), &u) in out.iter().zip(&xs).zip(&up) {
            let r = g as f64 / (1.0 + (-(g as f64)).exp()) * u as f64;
            assert!(
                (*o as f64 - r).abs() <= 1e-6 * r.abs().max(1e-3),
                "{g} {u}: {o} vs {r}"
            );
        }
    }
}
