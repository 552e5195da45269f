//! The 16-bit-activation path against the f64 product of the dequantized
//! weight and the f32 activations (16-bit activation rounding: within
//! 1e-4 of Σ|w·x|), and its AVX2 kernels against their scalar twins bit
//! for bit, for every format of the interleaved form, tile remainders
//! (1 to 6 rows), several tasks' worth of rows and a partial row group.

use mm_core::weight::MmFormat;
use mm_core::{HostBytes, WeightData, WeightFormat as F};
use proptest::prelude::*;

use super::super::il::{prepare, supports};
use super::super::testing::{random_blocks, random_f32};
use super::super::tests::{assert_close, reference};
use super::*;

fn ggml(format: F, m: usize, k: usize, seed: u64) -> WeightData {
    WeightData::new(
        format,
        vec![m, k],
        HostBytes::owned(random_blocks(format, m, k, seed)),
    )
    .unwrap()
}

fn mm_formats() -> Vec<MmFormat> {
    MmFormat::all()
        .into_iter()
        .filter(|&f| supports(&super::super::mm::tests::random_weight(f, 1, 128, 1)))
        .collect()
}

fn check(w: &WeightData, n: usize, seed: u64) {
    let (m, k) = (w.shape[0], w.shape[1]);
    let p = prepare(w).unwrap();
    let x = random_f32(n * k, seed);
    let twin = matmul_il16_with(Isa::Scalar, &p, &x, n).unwrap();
    let wd = mm_quant::dequantize_ref(w).unwrap();
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let (exact, mag) = reference(&wd, &x64, n, k, m);
    let what = format!("{} il16 twin n={n} k={k} m={m}", w.format.name());
    assert_close(&what, &twin, &exact, &mag, 1e-4);
    for &isa in Isa::available().iter().filter(|&&i| i != Isa::Scalar) {
        let simd = matmul_il16_with(isa, &p, &x, n).unwrap();
        assert_eq!(
            simd.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            twin.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{} il16 {} vs its scalar twin (n={n} k={k} m={m})",
            w.format.name(),
            isa.name()
        );
    }
}

#[test]
fn ggml_formats_every_tile_remainder() {
    for f in [F::Q4_0, F::Q4_1, F::Q8_0] {
        for n in [1, 2, 3, 4, 5, 6, 7, 13] {
            check(&ggml(f, 40, 96, n as u64), n, n as u64);
        }
        // Several row groups and more rows than one task's group.
        check(&ggml(f, 64, 576, 5), 130, 6);
    }
}

#[test]
fn metal_marlin_formats_and_groups() {
    let fs = mm_formats();
    assert_eq!(fs.len(), 5 * 4 + 1, "{fs:?}");
    for f in fs {
        for n in [1, 6, 11] {
            let w = super::super::mm::tests::random_weight(f, 40, 256, n as u64);
            check(&w, n, 9);
        }
    }
}

#[test]
fn rows_are_independent() {
    // A row's result does not depend on the rows beside it (batch
    // invariance): row 3 alone equals row 3 of a 61-row call.
    let w = ggml(F::Q4_0, 48, 192, 3);
    let p = prepare(&w).unwrap();
    let x = random_f32(61 * 192, 4);
    let all = matmul_il16(&p, &x, 61).unwrap();
    let one = matmul_il16(&p, &x[3 * 192..4 * 192], 1).unwrap();
    assert_eq!(&all[3 * 48..4 * 48], &one[..]);
}

#[test]
fn activation_codes_and_sums() {
    let mut x = random_f32(64, 1);
    x[40] = 0.0;
    x[32..64].iter_mut().for_each(|v| *v = 0.0);
    let (mut q, mut d, mut s) = (vec![0i16; 64], vec![0.0; 2], vec![0.0; 2]);
    quantize_row_ref(&x, &mut q, &mut d, &mut s, QMAX);
    let amax = x[..32].iter().fold(0.0f32, |a, v| a.max(v.abs()));
    assert_eq!(q[..32].iter().map(|v| v.unsigned_abs()).max(), Some(32767));
    assert_eq!(d[0], amax / 32767.0);
    let sum: i32 = q[..32].iter().map(|&v| v as i32).sum();
    assert_eq!(s[0], d[0] * sum as f32);
    for (v, &c) in x[..32].iter().zip(&q) {
        assert!((v - d[0] * c as f32).abs() <= d[0] * 0.5001);
    }
    assert_eq!((d[1], s[1]), (0.0, 0.0));
    assert!(q[32..].iter().all(|&v| v == 0));
}

#[test]
fn wrong_input_length_is_an_error() {
    let p = prepare(&ggml(F::Q4_0, 16, 64, 1)).unwrap();
    let e = matmul_il16(&p, &[0.0; 65], 1).unwrap_err().to_string();
    assert!(e.contains("65 inputs"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn random_shapes(fi in 0usize..3, n in 1usize..20, kb in 1usize..12, m in 1usize..70, seed in any::<u64>()) {
        let f = [F::Q4_0, F::Q4_1, F::Q8_0][fi];
        check(&ggml(f, m, 32 * kb, seed), n, seed);
    }
}

#[test]
fn simd_quantizer_matches_its_twin() {
    let k = 32 * 9;
    let mut x = random_f32(3 * k, 5);
    x[40] = f32::NAN; // block 1 of row 0
    x[100] = f32::INFINITY; // block 3 of row 0
    x[k..k + 32].iter_mut().for_each(|v| *v = 0.0); // row 1, block 0
    for (i, v) in x[2 * k..2 * k + 32].iter_mut().enumerate() {
        *v = (i as f32 - 16.0) * 0.5; // exact ties after scaling
    }
    let mut twin = Act16::default();
    twin.quantize(Isa::Scalar, &x, 3, k, QMAX);
    assert!(twin.d[1].is_nan() && twin.s[3].is_nan() && twin.q[32..64].iter().all(|&v| v == 0));
    for &isa in Isa::available().iter().filter(|&&i| i != Isa::Scalar) {
        let mut a = Act16::default();
        a.quantize(isa, &x, 3, k, QMAX);
        assert_eq!(a.q, twin.q, "{}", isa.name());
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.d), bits(&twin.d), "{}", isa.name());
        assert_eq!(bits(&a.s), bits(&twin.s), "{}", isa.name());
    }
}

#[test]
fn simd_panel_matches_its_twin() {
    let mut ws: Vec<WeightData> = [F::Q4_0, F::Q4_1, F::Q8_0]
        .into_iter()
        .map(|f| ggml(f, 40, 128, 2))
        .collect();
    ws.extend(
        mm_formats()
            .into_iter()
            .map(|f| super::super::mm::tests::random_weight(f, 40, 256, 3)),
    );
    for w in &ws {
        let p = prepare(w).unwrap();
        for g in 0..p.groups {
            let mut twin = Panel16::default();
            twin.fill(Isa::Scalar, &p, g);
            for &isa in Isa::available().iter().filter(|&&i| i != Isa::Scalar) {
                let mut simd = Panel16::default();
                simd.fill(isa, &p, g);
                assert_eq!(simd.codes, twin.codes, "{} {}", w.format.name(), isa.name());
            }
        }
    }
}
