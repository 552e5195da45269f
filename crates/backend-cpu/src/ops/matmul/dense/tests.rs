//! Dense kernel tests: widening every F16/BF16 bit pattern against the
//! scalar conversion, and every level's matmul (decode and prefill paths,
//! odd shapes) against the f64 scalar twin.

use mm_core::WeightFormat as F;
use proptest::prelude::*;

use super::*;
use crate::ops::qmatmul::testing::{random_dense, random_f32};
use crate::ops::qmatmul::tests::{assert_close, reference};

const FORMATS: [F; 3] = [F::F32, F::F16, F::BF16];

/// Every level's output against the f64 sums of the same stored values:
/// each output within 1e-5 · Σ|w·x| (f32 sums of ≤ a few hundred terms in
/// any order are far inside), and the scalar twin exactly rounded.
fn check(format: F, n: usize, k: usize, m: usize, seed: u64) {
    let w = random_dense(format, m * k, seed);
    let x = random_f32(n * k, seed);
    let wd: Vec<f32> = (0..m * k).map(|i| value_ref(format, &w, i)).collect();
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let (exact, mag) = reference(&wd, &x64, n, k, m);
    let r = matmul_ref(format, &w, &x, n, k, m);
    assert!(r.iter().zip(&exact).all(|(&a, &b)| a == b as f32));
    for &simd in Simd::available() {
        let y = matmul_with(simd, format, &w, &x, n, k, m).unwrap();
        let what = format!("{} {} n={n} k={k} m={m}", format.name(), simd.name());
        assert_close(&what, &y, &exact, &mag, 1e-5);
    }
}

#[test]
fn widen_every_bit_pattern() {
    let src: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
    for format in [F::F16, F::BF16] {
        for &simd in Simd::available() {
            // An odd length: registers and the scalar tail.
            for len in [1 << 16, (1 << 16) - 3] {
                let mut dst = vec![0.0f32; len];
                widen_with(simd, format, &src[..2 * len], &mut dst).unwrap();
                for (i, &v) in dst.iter().enumerate() {
                    let r = value_ref(format, &src, i);
                    assert!(
                        v.to_bits() == r.to_bits() || (v.is_nan() && r.is_nan()),
                        "{} {} {i:#06x}: {v:e} vs {r:e}",
                        format.name(),
                        simd.name()
                    );
                }
            }
        }
    }
}

#[test]
fn decode_and_prefill_shapes() {
    // (n, k, m): decode n ≤ 4 with every row-tile remainder, k below,
    // at and past the register widths; prefill n > 4 with every
    // activation-row remainder of the 6-row tile, several activation-row
    // groups (GROUP = 60) sharing one widened panel, a group of ≤ 4 rows
    // (direct path), and k > KC (column blocks, odd tails).
    let shapes = [
        (1, 1, 1),
        (1, 7, 5),
        (2, 8, 9),
        (3, 15, 17),
        (4, 16, 3),
        (4, 33, 70),
        (5, 17, 33),
        (9, 64, 19),
        (62, 40, 37),
        (71, 33, 20),
        (133, 24, 300),
        (127, 1001, 21),
    ];
    for (i, &(n, k, m)) in shapes.iter().enumerate() {
        for format in FORMATS {
            check(format, n, k, m, i as u64);
        }
    }
}

#[test]
fn unaligned_weights_give_the_same_result() {
    for format in FORMATS {
        let (n, k, m) = (6, 37, 21);
        let w = random_dense(format, m * k, 5);
        let x = random_f32(n * k, 5);
        let mut shifted = vec![0u8; w.len() + 1];
        shifted[1..].copy_from_slice(&w);
        for &simd in Simd::available() {
            let a = matmul_with(simd, format, &w, &x, n, k, m).unwrap();
            let b = matmul_with(simd, format, &shifted[1..], &x, n, k, m).unwrap();
            assert_eq!(a, b, "{} {}", format.name(), simd.name());
        }
    }
}

#[test]
fn rejects_bad_shapes_and_formats() {
    let w = random_dense(F::F16, 4 * 8, 1);
    assert!(matmul(F::F16, &w, &[0.0; 8], 1, 8, 3).is_err());
    assert!(matmul(F::F16, &w, &[0.0; 7], 1, 8, 4).is_err());
    assert!(matmul(F::Q8_0, &w, &[0.0; 8], 1, 8, 4).is_err());
    assert!(matmul(F::F16, &w, &[0.0; 8], 1, 8, 4).is_ok());
    assert!(widen_with(Simd::Scalar, F::BF16, &w, &mut [0.0; 31]).is_err());
    let missing = [Simd::Avx2, Simd::Avx512, Simd::Neon]
        .into_iter()
        .find(|s| !Simd::available().contains(s))
        .expect("some level is missing on every CPU");
    assert!(matmul_with(missing, F::F16, &w, &[0.0; 8], 1, 8, 4).is_err());
}

#[test]
fn detected_level_is_the_best_unless_forced() {
    let best = *Simd::available().last().unwrap();
    if std::env::var_os("MM_QMATMUL_ISA").is_none() {
        assert_eq!(Simd::detect(), best);
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx2") {
        assert!(Simd::available().contains(&Simd::Avx512));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_shapes(fi in 0usize..3, n in 1usize..10, k in 1usize..200, m in 1usize..40, seed in any::<u64>()) {
        check(FORMATS[fi], n, k, m | 1, seed);
    }
}

/// The panel path (quantized prefill) over F16 rows widened by the fill
/// function: the same sums as the F16 kernels, on every level, including
/// a row count that is not a multiple of the register tile.
#[test]
fn panels_match_the_reference() {
    let (k, m) = (200, 37);
    let w = random_dense(F::F16, m * k, 5);
    let wd: Vec<f32> = (0..m * k).map(|i| value_ref(F::F16, &w, i)).collect();
    for n in [1usize, 7, 40] {
        let x = random_f32(n * k, 6);
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let (exact, mag) = reference(&wd, &x64, n, k, m);
        for &simd in Simd::available() {
            let y = matmul_panels_with(simd, &x, n, k, m, |j0, j1, p| {
                p.copy_from_slice(&wd[j0 * k..j1 * k])
            })
            .unwrap();
            assert_close(
                &format!("panels {} n={n}", simd.name()),
                &y,
                &exact,
                &mag,
                1e-5,
            );
        }
    }
    assert!(matmul_panels_with(Simd::Scalar, &[0.0; 3], 2, 2, 1, |_, _, _| {}).is_err());
}
