//! The GPU layout of quantized weights (`mm_quant::gpu_layout`, read by
//! the CUDA and wgpu kernels) against the reference dequantization.

use mm_quant::gpu_layout::{supports, QLayout};

/// The layout's values equal the reference dequantization of every
/// format the conformance suite draws (GGML and metal-marlin, every
/// group size), within f32 rounding of `s·lut + o`.
#[test]
fn layout_matches_reference_dequantization() {
    let mut ws = mm_conformance::ggml_weights(7).unwrap();
    ws.extend(mm_conformance::mm_weights(7).unwrap());
    let mut seen = 0;
    for (f, w) in ws {
        if !supports(f) {
            continue;
        }
        seen += 1;
        let l = QLayout::from_weight(&w).unwrap();
        let got = l.dequantize();
        let want = mm_quant::dequantize_ref(&w).unwrap();
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-30);
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 2e-7 * scale + 1e-6 * b.abs(),
                "{} {:?} value {i}: layout {a}, reference {b}",
                f.name(),
                w.shape
            );
        }
        assert_eq!(got.len(), want.len());
    }
    assert!(seen >= 20, "only {seen} formats checked");
}
