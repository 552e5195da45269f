//! The interleaved form against the plain scalar kernels (GGML formats:
//! `scalar.rs`; metal-marlin formats: `mm.rs`'s twin) — the same exact
//! integer block sums in another f32 order, so within 1e-5 — and the VNNI
//! and AVX2 kernels against their scalar twin bit for bit, for
//! every format the form
//! takes (all group sizes), decode and prefill row counts and a partial
//! last row group.

use mm_core::weight::MmFormat;
use mm_core::{HostBytes, WeightData, WeightFormat as F};
use proptest::prelude::*;

use super::super::testing::{random_blocks, random_f32};
use super::super::tests::{assert_close, reference};
use super::super::{matmul_q_with, Isa, QAct};
use super::*;

const FORMATS: [F; 3] = [F::Q4_0, F::Q4_1, F::Q8_0];

fn weight(format: F, m: usize, k: usize, seed: u64) -> WeightData {
    WeightData::new(
        format,
        vec![m, k],
        HostBytes::owned(random_blocks(format, m, k, seed)),
    )
    .unwrap()
}

fn check(format: F, n: usize, kb: usize, m: usize, seed: u64) {
    let k = 32 * kb;
    let w = weight(format, m, k, seed);
    let p = prepare(&w).unwrap();
    assert_eq!(p.bytes() - 64, p.groups * LANES * w.bytes.len() / m);
    let x = random_f32(n * k, seed);
    let plain = matmul_q_with(Isa::Scalar, format, &w.bytes, &x, n, k, m).unwrap();
    compare(&w, &p, &plain, &x, n);
}

/// metal-marlin `f` against the `mm.rs` scalar twin.
fn check_mm(f: MmFormat, n: usize, kb: usize, m: usize, seed: u64) {
    let k = 32 * kb;
    if f.check_row_len(k).is_err() {
        return;
    }
    let w = super::super::mm::tests::random_weight(f, m, k, seed);
    let p = prepare(&w).unwrap();
    let x = random_f32(n * k, seed);
    let mp = super::super::mm::prepare(&w).unwrap();
    let plain = super::super::mm::matmul_mm_with(Isa::Scalar, &mp, &x, n).unwrap();
    compare(&w, &p, &plain, &x, n);
}

fn il_formats() -> Vec<MmFormat> {
    MmFormat::all()
        .into_iter()
        .filter(|&f| supports(&super::super::mm::tests::random_weight(f, 1, 128, 1)))
        .collect()
}

fn compare(w: &WeightData, p: &IlPrepared, plain: &[f32], x: &[f32], n: usize) {
    let (format, k, m) = (w.format, p.cols, p.rows);
    let twin = matmul_il_with(Isa::Scalar, p, x, n).unwrap();
    let wd = mm_quant::dequantize_ref(w).unwrap();
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let mag = reference(&wd, &x64, n, k, m).1;
    let plain64: Vec<f64> = plain.iter().map(|&v| v as f64).collect();
    let what = format!("{} il ref vs plain n={n} k={k} m={m}", format.name());
    assert_close(&what, &twin, &plain64, &mag, 1e-5);
    for &isa in Isa::available().iter().filter(|&&i| i != Isa::Scalar) {
        let simd = matmul_il_with(isa, p, x, n).unwrap();
        assert_eq!(
            simd.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            twin.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{} {} vs its scalar twin (n={n} k={k} m={m})",
            format.name(),
            isa.name()
        );
    }
}

#[test]
fn every_format_and_row_count() {
    for f in FORMATS {
        for n in [1, 2, 3, 4, 5, 9] {
            // 40 rows: two full groups and a partial one.
            check(f, n, 3, 40, n as u64);
        }
        check(f, 1, 18, 576, 7);
        check(f, 13, 18, 200, 8);
    }
}

#[test]
fn every_metal_marlin_format_and_group() {
    let fs = il_formats();
    // int4/int8 sym+asym, fp4: 4 group sizes each; mxfp4: 32 only.
    assert_eq!(fs.len(), 5 * 4 + 1, "{fs:?}");
    for f in fs {
        for n in [1, 4, 6] {
            check_mm(f, n, 8, 40, n as u64);
        }
        check_mm(f, 2, 4, 16, 9);
    }
}

#[test]
fn panels_from_inner_groups() {
    let (m, k) = (64, 96);
    for f in FORMATS {
        let w = weight(f, m, k, 3);
        let p = prepare(&w).unwrap();
        let x = random_f32(3 * k, 4);
        let mut act = QAct::new();
        act.quantize(
            ActKind::Q8_0,
            &x,
            3,
            k,
            super::super::q8::quantize_row,
            false,
        );
        let xs: Vec<ActRow> = (0..3).map(|i| act.row(i)).collect();
        let full = matmul_il_with(Isa::Scalar, &p, &x, 3).unwrap();
        for isa in Isa::available() {
            let mut out = vec![0.0f32; 3 * 20];
            panel(*isa, &p, 16, 36, &xs, &mut out);
            for r in 0..3 {
                assert_eq!(
                    &out[r * 20..(r + 1) * 20],
                    &full[r * m + 16..r * m + 36],
                    "{}",
                    isa.name()
                );
            }
        }
    }
}

#[test]
fn bad_weights_are_refused() {
    let w = WeightData::new(
        F::Q4K,
        vec![4, 256],
        HostBytes::owned(random_blocks(F::Q4K, 4, 256, 1)),
    )
    .unwrap();
    let e = prepare(&w).err().unwrap().to_string();
    assert!(e.contains("Q4_K") && e.contains("interleaved"), "{e}");
    let mut w = weight(F::Q4_0, 4, 64, 1);
    w.bytes = HostBytes::owned(w.bytes[..w.bytes.len() - 18].to_vec());
    let e = prepare(&w).err().unwrap().to_string();
    assert!(e.contains("whole 32-blocks"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn random_shapes(fi in 0usize..3, n in 1usize..7, kb in 1usize..12, m in 1usize..70, seed in any::<u64>()) {
        check(FORMATS[fi], n, kb, m, seed);
    }

    #[test]
    fn random_metal_marlin_shapes(fi in 0usize..21, n in 1usize..7, kb in 1usize..12, m in 1usize..70, seed in any::<u64>()) {
        check_mm(il_formats()[fi], n, kb, m, seed);
    }
}
