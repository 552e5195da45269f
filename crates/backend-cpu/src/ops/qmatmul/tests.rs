//! Kernel tests: the integer scalar path against an f64 reference over the
//! dequantized weights and activations, every SIMD path against the scalar
//! path, and the SIMD activation quantizer against the scalar one.

use mm_core::WeightFormat as F;
use proptest::prelude::*;

use super::testing::{random_blocks, random_f32};
use super::*;

pub(crate) const FORMATS: [F; 10] = F::GGML_BLOCK;

/// Relative L2 error of `a` against `b`; NaN never passes.
pub(crate) fn rel_l2(a: &[f32], b: &[f64]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        num += (*x as f64 - y).powi(2);
        den += y * y;
    }
    if num.is_nan() {
        return f64::INFINITY;
    }
    (num / den.max(1e-30)).sqrt()
}

/// Σ w·x in f64 over a dequantized weight `wd` (`[m, k]`) and activations
/// `x` (`[n, k]`, f64), with `Σ |w·x|` beside each output: the size its
/// rounding errors scale with, which (unlike the sum) never cancels.
pub(crate) fn reference(
    wd: &[f32],
    x: &[f64],
    n: usize,
    k: usize,
    m: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (mut y, mut mag) = (vec![0.0f64; n * m], vec![0.0f64; n * m]);
    for i in 0..n {
        for j in 0..m {
            for t in 0..k {
                let p = wd[j * k + t] as f64 * x[i * k + t];
                y[i * m + j] += p;
                mag[i * m + j] += p.abs();
            }
        }
    }
    (y, mag)
}

/// `y` against the reference `r`: each output within `tol`·Σ|w·x| (`mag`,
/// the size of any f32 rounding or re-association of its sum, which does
/// not shrink when the sum cancels, as a relative error does) and, over
/// ≥ 32 outputs, within `tol` relative L2.
pub(crate) fn assert_close(what: &str, y: &[f32], r: &[f64], mag: &[f64], tol: f64) {
    for (o, ((&v, &e), &a)) in y.iter().zip(r).zip(mag).enumerate() {
        let err = (v as f64 - e).abs();
        assert!(
            err <= tol * a,
            "{what}: output {o} off by {err:.3e} > {tol:.0e} × Σ|w·x| = {:.3e}",
            tol * a
        );
    }
    if y.len() >= 32 {
        let e = rel_l2(y, r);
        assert!(e < tol, "{what}: relative L2 {e:.2e} ≥ {tol:.0e}");
    }
}

/// The f64 references of [`check_int_path`]: with the f32 activations, and
/// `Σ |w·x|` of each output.
pub(crate) struct IntRef {
    pub exact: Vec<f64>,
    pub mag: Vec<f64>,
}

/// Checks the output `y` of an integer-path kernel (8-bit activations
/// `act`, blocks of `block` values) over the dequantized weight `wd`:
///
/// * against the activations *as quantized*: exact integer block sums, so
///   each output is within f32 rounding of its block products and their
///   sum, 1e-5·Σ|w·x_q| (≤ 16 blocks × 2^-24 × 2 roundings is 2e-6),
///   see [`assert_close`];
/// * against the f32 activations `x`, a hard bound: rounding moves each
///   activation by at most d_x/2 (d_x = amax/127 of its block), so
///   |y − y_ref| ≤ Σ_t |w_t|·d_x(t)/2, plus the f32 rounding above.
///
/// Returns the f64 references with the f32 activations, for the callers'
/// statistical and SIMD checks.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_int_path(
    what: &str,
    y: &[f32],
    wd: &[f32],
    x: &[f32],
    act: &QAct,
    block: usize,
    (n, k, m): (usize, usize, usize),
) -> IntRef {
    let xq: Vec<f64> = (0..n)
        .flat_map(|i| {
            let r = act.row(i);
            (0..k).map(move |t| r.qs[t] as f64 * r.d[t / block] as f64)
        })
        .collect();
    let (exact_q, mag_q) = reference(wd, &xq, n, k, m);
    assert_close(
        &format!("{what} vs quantized activations"),
        y,
        &exact_q,
        &mag_q,
        1e-5,
    );
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let (exact, mag) = reference(wd, &x64, n, k, m);
    for i in 0..n {
        let r = act.row(i);
        for j in 0..m {
            let o = i * m + j;
            let bound: f64 = (0..k)
                .map(|t| (wd[j * k + t] as f64).abs() * r.d[t / block] as f64 / 2.0)
                .sum();
            let err = (y[o] as f64 - exact[o]).abs();
            assert!(
                err <= bound * (1.0 + 1e-3) + 1e-5 * mag[o],
                "{what}: y[{i},{j}] vs f32 activations off by {err:.3e} > bound {bound:.3e}"
            );
        }
    }
    IntRef { exact, mag }
}

fn check_format(format: F, n: usize, kb: usize, m: usize, seed: u64) {
    let k = kb * format.block().0;
    let w = random_blocks(format, m, k, seed);
    let x = random_f32(n * k, seed);
    let mut wd = vec![0.0f32; m * k];
    scalar::dequantize_row_ref(format, &w, &mut wd).unwrap();
    let mut act = QAct::new();
    quantize_activations(Isa::Scalar, format, &x, n, k, &mut act);
    let scalar = matmul_q_with(Isa::Scalar, format, &w, &x, n, k, m).unwrap();
    let what = format!("{} scalar n={n} k={k} m={m}", format.name());
    let qk = act_kind(format).block();
    let r = check_int_path(&what, &scalar, &wd, &x, &act, qk, (n, k, m));
    // Statistically, over enough outputs and enough independently
    // quantized activation blocks: within 1e-2 relative L2 of the
    // f32-activation product (the expected error is ~4e-3). One block
    // (n = 1, one Q8_K block of 256) is one draw of the activations'
    // rounding, shared by every output: a proptest case met 1.26e-2 there
    // (Q4_K, n=1, k=256, m=71) while every output was within its bound.
    if n * m >= 32 && n * (k / qk) >= 4 {
        let e = rel_l2(&scalar, &r.exact);
        assert!(e < 1e-2, "{what}: vs f32 activations {e:.2e}");
    }
    let scalar64: Vec<f64> = scalar.iter().map(|&v| v as f64).collect();
    for &isa in Isa::available() {
        let y = matmul_q_with(isa, format, &w, &x, n, k, m).unwrap();
        let what = format!(
            "{} {} vs scalar n={n} k={k} m={m}",
            format.name(),
            isa.name()
        );
        assert_close(&what, &y, &scalar64, &r.mag, 2e-6);
    }
}

/// (activation rows, blocks per row, weight rows): decode (n ≤ 4) and
/// prefill (n > 4) shapes, odd and tiny `m`.
pub(crate) const SHAPES: [(usize, usize, usize); 8] = [
    (1, 1, 1),
    (1, 3, 37),
    (2, 2, 9),
    (3, 1, 17),
    (4, 2, 8),
    (5, 2, 33),
    (9, 1, 70),
    (13, 3, 130),
];

#[test]
fn every_format_every_isa() {
    for (i, &f) in FORMATS.iter().enumerate() {
        for &(n, kb, m) in &SHAPES {
            check_format(f, n, kb, m, 100 * i as u64 + n as u64);
        }
    }
}

/// On aarch64 the NEON kernels are available and chosen by default, and
/// (as `aarch64.rs` states) bit-exact with the scalar twin: the same integer
/// block sums combined by the same f32 expression.
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_is_selected_and_bit_exact() {
    assert!(Isa::available().contains(&Isa::Neon));
    if std::env::var_os("MM_QMATMUL_ISA").is_none() {
        assert_eq!(Isa::detect(), Isa::Neon);
    }
    for (i, &f) in FORMATS.iter().enumerate() {
        for &(n, kb, m) in &SHAPES {
            let k = kb * f.block().0;
            let w = random_blocks(f, m, k, 300 + i as u64);
            let x = random_f32(n * k, 300 + n as u64);
            let s = matmul_q_with(Isa::Scalar, f, &w, &x, n, k, m).unwrap();
            let y = matmul_q_with(Isa::Neon, f, &w, &x, n, k, m).unwrap();
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&y), bits(&s), "{} n={n} k={k} m={m}", f.name());
        }
    }
}

#[test]
fn simd_quantizer_matches_scalar() {
    for &isa in Isa::available() {
        for kind in [ActKind::Q8_0, ActKind::Q8K] {
            for (n, seed) in [(1usize, 1u64), (3, 2), (40, 3)] {
                let k = 512;
                let mut x = random_f32(n * k, seed);
                x[..64].iter_mut().for_each(|v| *v = 0.0); // all-zero blocks
                x[100] = 1e-30;
                x[300] = -7.5;
                let fmt = if kind == ActKind::Q8K {
                    F::Q4K
                } else {
                    F::Q4_0
                };
                let (mut a, mut b) = (QAct::new(), QAct::new());
                quantize_activations(Isa::Scalar, fmt, &x, n, k, &mut a);
                quantize_activations(isa, fmt, &x, n, k, &mut b);
                for i in 0..n {
                    let (ra, rb) = (a.row(i), b.row(i));
                    assert_eq!(ra.qs, rb.qs, "{} qs", isa.name());
                    assert_eq!(ra.d, rb.d);
                    assert_eq!(ra.isum, rb.isum);
                    assert_eq!(ra.s, rb.s);
                    assert_eq!(ra.bsums, rb.bsums);
                }
            }
        }
    }
}

#[test]
fn large_shapes_use_tiled_path() {
    // Many activation rows and output rows: several tiles and group chunks.
    for f in [F::Q4_1, F::Q8_0, F::Q4K, F::Q6K] {
        let (n, k, m) = (37, 512, 300);
        let w = random_blocks(f, m, k, 7);
        let x = random_f32(n * k, 7);
        let s: Vec<f64> = matmul_q_with(Isa::Scalar, f, &w, &x, n, k, m)
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        let y = matmul_q(f, &w, &x, n, k, m).unwrap();
        assert!(rel_l2(&y, &s) < 2e-6, "{}", f.name());
    }
}

#[test]
fn rejects_bad_shapes() {
    let w = random_blocks(F::Q4_0, 4, 64, 1);
    assert!(matmul_q(F::Q4_0, &w, &[0.0; 64], 1, 64, 3).is_err());
    assert!(matmul_q(F::Q4_0, &w, &[0.0; 63], 1, 63, 4).is_err());
    assert!(matmul_q(F::F32, &w, &[0.0; 64], 1, 64, 4).is_err());
}

#[test]
fn cancelling_single_output() {
    // A proptest case CI met: one output whose sum cancels to a small
    // fraction of its terms, so any relative-to-the-output tolerance fails
    // while the kernel is right.
    check_format(F::Q4_0, 1, 6, 1, 3570674295258565710);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn random_shapes(fi in 0usize..10, n in 1usize..12, kb in 1usize..5, m in 1usize..80, seed in any::<u64>()) {
        let f = FORMATS[fi];
        let kb = if scalar::is_kquant(f) { kb.min(2) } else { kb * 2 };
        check_format(f, n, kb, m, seed);
    }
}

#[test]
fn block_layouts_match_mm_quant() {
    // The layouts the kernels assume (scalar::dequantize_row_ref) are
    // bit-exact with the llama.cpp-compatible reference dequantizers.
    for (i, &f) in FORMATS.iter().enumerate() {
        let k = 4 * f.block().0;
        let w = random_blocks(f, 3, k, 900 + i as u64);
        let (mut a, mut b) = (vec![0.0f32; 3 * k], vec![0.0f32; 3 * k]);
        scalar::dequantize_row_ref(f, &w, &mut a).unwrap();
        mm_quant::dequantize_row(f, &w, &mut b).unwrap();
        let (ab, bb): (Vec<u32>, Vec<u32>) = (
            a.iter().map(|v| v.to_bits()).collect(),
            b.iter().map(|v| v.to_bits()).collect(),
        );
        assert_eq!(ab, bb, "{}", f.name());
    }
}

#[test]
fn reference_quantized_weights() {
    // Weights from the reference quantizers: the kernel output is within
    // 8-bit activation error of f32 activations times the quantized weights.
    for f in [F::Q4_0, F::Q4_1, F::Q5_0, F::Q5_1, F::Q8_0] {
        let (n, k, m) = (3, 256, 40);
        let wf = random_f32(m * k, 11);
        let w = mm_quant::ggml::quantize(f, &wf).unwrap();
        let x = random_f32(n * k, 12);
        let mut wd = vec![0.0f32; m * k];
        scalar::dequantize_row_ref(f, &w, &mut wd).unwrap();
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let r = reference(&wd, &x64, n, k, m).0;
        for &isa in Isa::available() {
            let y = matmul_q_with(isa, f, &w, &x, n, k, m).unwrap();
            let e = rel_l2(&y, &r);
            assert!(e < 1e-2, "{} {}: {e:.2e}", f.name(), isa.name());
        }
    }
}
