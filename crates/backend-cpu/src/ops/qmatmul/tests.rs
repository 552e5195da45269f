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

/// Σ deq(w)·deq(xq) in f64, with the activations as the kernels see them.
fn reference_quantized(format: F, w: &[u8], act: &QAct, n: usize, k: usize, m: usize) -> Vec<f64> {
    let mut wd = vec![0.0f32; m * k];
    scalar::dequantize_row_ref(format, w, &mut wd).unwrap();
    let qk = act_kind(format).block();
    let mut y = vec![0.0f64; n * m];
    for i in 0..n {
        let x = act.row(i);
        for j in 0..m {
            let mut s = 0.0f64;
            for t in 0..k {
                s += wd[j * k + t] as f64 * (x.qs[t] as f64 * x.d[t / qk] as f64);
            }
            y[i * m + j] = s;
        }
    }
    y
}

/// Σ deq(w)·x in f64 with the f32 activations.
fn reference_f32(format: F, w: &[u8], x: &[f32], n: usize, k: usize, m: usize) -> Vec<f64> {
    let mut wd = vec![0.0f32; m * k];
    scalar::dequantize_row_ref(format, w, &mut wd).unwrap();
    let mut y = vec![0.0f64; n * m];
    for i in 0..n {
        for j in 0..m {
            y[i * m + j] = (0..k)
                .map(|t| wd[j * k + t] as f64 * x[i * k + t] as f64)
                .sum();
        }
    }
    y
}

fn check_format(format: F, n: usize, kb: usize, m: usize, seed: u64) {
    let k = kb * format.block().0;
    let w = random_blocks(format, m, k, seed);
    let x = random_f32(n * k, seed);
    let mut act = QAct::new();
    quantize_activations(Isa::Scalar, format, &x, n, k, &mut act);
    let exact = reference_quantized(format, &w, &act, n, k, m);
    let scalar = matmul_q_with(Isa::Scalar, format, &w, &x, n, k, m).unwrap();
    // The integer path is exact up to f32 rounding of the block sums.
    let e = rel_l2(&scalar, &exact);
    assert!(
        e < 1e-5,
        "{} scalar vs f64 over quantized values: {e:.2e} (n={n} k={k} m={m})",
        format.name()
    );
    // 8-bit activations: within 1e-2 of the f32-activation product (the
    // expected error is ~4e-3; a handful of outputs may land further).
    let tol = if n * m >= 32 { 1e-2 } else { 3e-2 };
    let e = rel_l2(&scalar, &reference_f32(format, &w, &x, n, k, m));
    assert!(
        e < tol,
        "{} scalar vs f32 activations: {e:.2e} (n={n} k={k} m={m})",
        format.name()
    );
    let scalar64: Vec<f64> = scalar.iter().map(|&v| v as f64).collect();
    for &isa in Isa::available() {
        let y = matmul_q_with(isa, format, &w, &x, n, k, m).unwrap();
        let e = rel_l2(&y, &scalar64);
        assert!(
            e < 2e-6,
            "{} {} vs scalar: {e:.2e} (n={n} k={k} m={m})",
            format.name(),
            isa.name()
        );
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
        let r = reference_f32(f, &w, &x, n, k, m);
        for &isa in Isa::available() {
            let y = matmul_q_with(isa, f, &w, &x, n, k, m).unwrap();
            let e = rel_l2(&y, &r);
            assert!(e < 1e-2, "{} {}: {e:.2e}", f.name(), isa.name());
        }
    }
}
