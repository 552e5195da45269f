//! The 16-bit dense path against the f64 product of the stored weights and
//! the f32 activations (14-bit weight and 15-bit activation rounding:
//! within 2e-4 of Σ|w·x| on uniform values, relative L2 under 2e-4), and
//! its AVX2 panel decode and matmul against their scalar twins bit for
//! bit, over wide magnitudes, NaN/∞/zero/tiny blocks and partial groups.

use mm_core::WeightFormat as F;
use proptest::prelude::*;

use super::*;
use crate::ops::qmatmul::testing::{random_dense, random_f32};
use crate::ops::qmatmul::tests::{assert_close, reference};

const FORMATS: [F; 3] = [F::F32, F::F16, F::BF16];

/// Uniform values in [-1, 1) stored in `format`.
fn uniform(format: F, n: usize, seed: u64) -> Vec<u8> {
    let v = random_f32(n, seed);
    match format {
        F::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        F::F16 => v
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        _ => v
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect(),
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// Every ISA's output against the twin bit for bit; the twin against the
/// f64 product within `tol`·Σ|w·x|.
fn check(format: F, w: &[u8], n: usize, k: usize, m: usize, seed: u64, tol: Option<f64>) {
    let x = random_f32(n * k, seed ^ 77);
    let twin = matmul_dense16_with(Isa::Scalar, format, w, &x, n, k, m).unwrap();
    if let Some(tol) = tol {
        let wd: Vec<f32> = (0..m * k).map(|i| value_ref(format, w, i)).collect();
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let (exact, mag) = reference(&wd, &x64, n, k, m);
        let what = format!("{} dense16 twin n={n} k={k} m={m}", format.name());
        assert_close(&what, &twin, &exact, &mag, tol);
    }
    for &isa in Isa::available().iter().filter(|&&i| i != Isa::Scalar) {
        let simd = matmul_dense16_with(isa, format, w, &x, n, k, m).unwrap();
        assert_eq!(
            bits(&simd),
            bits(&twin),
            "{} dense16 {} vs its scalar twin (n={n} k={k} m={m})",
            format.name(),
            isa.name()
        );
    }
}

#[test]
fn uniform_weights_every_tile_remainder() {
    for format in FORMATS {
        for n in [1, 2, 3, 4, 5, 6, 7, 13] {
            let (k, m) = (96, 40);
            check(
                format,
                &uniform(format, m * k, n as u64),
                n,
                k,
                m,
                n as u64,
                Some(2e-4),
            );
        }
        // Several tasks' worth of rows and row groups.
        let (n, k, m) = (130, 256, 70);
        check(format, &uniform(format, m * k, 9), n, k, m, 9, Some(2e-4));
    }
}

#[test]
fn wide_magnitudes_match_the_twin() {
    // F16 down to subnormals, BF16/F32 over 2^-40…2^40: the rounding is
    // relative to each block's largest value, so only the twin is exact.
    for format in FORMATS {
        let (n, k, m) = (7, 128, 37);
        check(format, &random_dense(format, m * k, 3), n, k, m, 3, None);
    }
}

#[test]
fn special_blocks() {
    let (k, m) = (64, 20);
    let mut v = random_f32(m * k, 4);
    v[3] = f32::NAN; // row 0, block 0
    v[k + 40] = f32::INFINITY; // row 1, block 1
    v[2 * k..2 * k + 32].iter_mut().for_each(|x| *x = 0.0); // row 2, block 0
    v[3 * k..3 * k + 32].iter_mut().for_each(|x| *x = 1e-38); // row 3, block 0
                                                              // Row 4, block 0: amax 8191 (scale 1), the others halfway between codes.
    for (i, x) in v[4 * k..4 * k + 32].iter_mut().enumerate() {
        *x = if i == 0 { 8191.0 } else { i as f32 - 16.5 };
    }
    let w: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut twin = Panel16::default();
    fill_ref(F::F32, &w, 16, k, &mut twin);
    assert!(twin.d[0].is_nan(), "NaN block");
    // Row 1, block 1: scale (h·nb + b)·8 + j = 9.
    assert!(twin.d[9].is_nan(), "inf block");
    assert_eq!(twin.d[2], 0.0, "zero block");
    assert_eq!(twin.d[3], 0.0, "block too small for a finite inverse");
    for &isa in Isa::available().iter().filter(|&&i| i != Isa::Scalar) {
        let mut simd = Panel16::default();
        fill(isa, F::F32, &w, 16, k, &mut simd);
        assert_eq!(simd.codes, twin.codes, "{}", isa.name());
        assert_eq!(bits(&simd.d), bits(&twin.d), "{}", isa.name());
    }
    let x = random_f32(3 * k, 5);
    let y = matmul_dense16_with(Isa::Scalar, F::F32, &w, &x, 3, k, m).unwrap();
    for r in 0..3 {
        assert!(
            y[r * m].is_nan() && y[r * m + 1].is_nan(),
            "NaN/∞ rows give NaN"
        );
        assert!(y[r * m + 2..r * m + 20].iter().all(|v| v.is_finite()));
    }
    check(F::F32, &w, 3, k, m, 5, None);
}

#[test]
fn partial_row_groups_match_the_twin() {
    for format in FORMATS {
        for rows in [1, 5, 8, 9, 16] {
            let k = 96;
            let w = random_dense(format, rows * k, rows as u64);
            let mut twin = Panel16::default();
            fill_ref(format, &w, rows, k, &mut twin);
            for &isa in Isa::available().iter().filter(|&&i| i != Isa::Scalar) {
                let mut simd = Panel16::default();
                fill(isa, format, &w, rows, k, &mut simd);
                assert_eq!(simd.codes, twin.codes, "{} rows={rows}", format.name());
                assert_eq!(
                    bits(&simd.d),
                    bits(&twin.d),
                    "{} rows={rows}",
                    format.name()
                );
            }
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let w = uniform(F::F16, 4 * 64, 1);
    let x = random_f32(2 * 64, 1);
    for (what, r) in [
        (
            "k not whole blocks",
            matmul_dense16(F::F16, &w[..4 * 48 * 2], &x[..96], 2, 48, 4),
        ),
        (
            "short weight",
            matmul_dense16(F::F16, &w[..100], &x, 2, 64, 4),
        ),
        (
            "short input",
            matmul_dense16(F::F16, &w, &x[..100], 2, 64, 4),
        ),
        (
            "quantized format",
            matmul_dense16(F::Q8_0, &w, &x, 2, 64, 4),
        ),
    ] {
        assert!(r.is_err(), "{what} must be an error");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn random_shapes(fi in 0usize..3, n in 1usize..20, kb in 1usize..10, m in 1usize..70, seed in any::<u64>()) {
        let format = FORMATS[fi];
        let k = 32 * kb;
        check(format, &uniform(format, m * k, seed), n, k, m, seed, Some(2e-4));
    }
}
