use super::codebook::code_with;
use super::quantize::quantize_trellis;
use super::viterbi::{encode_tile, Codebook, Workspace, WRAP_WINDOW};
use super::*;

/// Deterministic standard normals (Box–Muller over a splitmix stream).
pub(crate) fn gaussian(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (a, b) = (next().max(1e-300), next());
            ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
        })
        .collect()
}

#[test]
fn the_stream_decodes_to_the_searched_codes_across_the_wrap() {
    let cb = Codebook::new();
    for k in BITS {
        let mut ws = Workspace::new(k, &cb);
        for seed in 0..3 {
            let t: Vec<f32> = gaussian(seed, TILE_LEN).iter().map(|v| v * 130.0).collect();
            let mut words = vec![0u32; 8 * k as usize];
            let err = encode_tile(&t, &cb, &mut ws, &mut words);
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            let mut c = [0i32; TILE_LEN];
            decode_tile(&bytes, k, &mut c);
            let e: f64 = c
                .iter()
                .zip(&t)
                .map(|(&c, &t)| (c as f64 - t as f64).powi(2))
                .sum();
            assert!(
                (e - err as f64).abs() <= 1e-3 * e.max(1.0),
                "k {k}: decoded error {e} vs searched {err}"
            );
            let nmse = e / t.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
            let bound = [0.0, 0.0, 0.09, 0.03, 0.01][k as usize];
            assert!(nmse < bound, "k {k}: normalized error {nmse} above {bound}");
        }
    }
}

#[test]
fn quantized_weights_decode_by_the_reference_and_the_fast_path_alike() {
    let (rows, cols) = (48, 96);
    let mut w = gaussian(7, rows * cols);
    // Rows of different scales and one outlier column, as real weights have.
    for (n, row) in w.chunks_exact_mut(cols).enumerate() {
        row.iter_mut().for_each(|v| *v *= 0.01 * (1 + n % 5) as f32);
        row[3] *= 8.0;
    }
    w[5 * cols..6 * cols].fill(0.0);
    for k in BITS {
        let q = quantize_trellis(&w, rows, cols, k, 11).unwrap();
        assert_eq!(q.codes.len(), rows * cols * k as usize / 8);
        let r = dequantize_trellis_ref(k, rows, cols, &q.codes, &q.scales).unwrap();
        let f = dequantize_trellis(k, rows, cols, &q.codes, &q.scales).unwrap();
        for (a, b) in r.iter().zip(&f) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{a} vs {b}");
        }
        assert!(
            r[5 * cols..6 * cols].iter().all(|&v| v == 0.0),
            "a zero row stays zero"
        );
        for range in [0..1, 17..18, 3..40, 0..rows] {
            let mut o = vec![0f32; range.len() * cols];
            dequantize_trellis_rows(k, rows, cols, &q.codes, &q.scales, range.clone(), &mut o)
                .unwrap();
            for (a, b) in o.iter().zip(&r[range.start * cols..range.end * cols]) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "rows {range:?}: {a} vs {b}"
                );
            }
        }
        let err: f64 = r
            .iter()
            .zip(&w)
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum();
        let nmse = err / w.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
        let bound = [0.0, 0.0, 0.09, 0.03, 0.01][k as usize];
        assert!(
            nmse < bound,
            "trellis{k}: normalized error {nmse} above {bound}"
        );
    }
}

#[test]
fn bad_shapes_and_values_are_errors() {
    assert!(quantize_trellis(&[0.0; 16 * 24], 16, 24, 3, 0).is_err());
    assert!(quantize_trellis(&[0.0; 256], 16, 16, 5, 0).is_err());
    let mut w = vec![0.5f32; 256];
    w[17] = f32::NAN;
    let e = quantize_trellis(&w, 16, 16, 2, 0).unwrap_err().to_string();
    assert!(e.contains("(1, 1)"), "{e}");
    assert!(decode_codes(2, 16, 16, &[0u8; 63]).is_err());
    // The stored parts of shapes the format cannot tile.
    use crate::mm::mm_part_shapes;
    use mm_core::weight::{MmFormat, MmKind};
    let f = MmFormat::new(MmKind::Trellis(3), 0).unwrap();
    assert!(mm_part_shapes(f, &[48, 64]).is_ok());
    for shape in [&[40usize, 64][..], &[48, 40], &[2, 48, 64], &[64]] {
        let e = mm_part_shapes(f, shape).unwrap_err().to_string();
        assert!(e.contains("trellis3"), "{shape:?}: {e}");
    }
    assert!(MmFormat::new(MmKind::Trellis(3), 64).is_err());
    assert!(MmFormat::new(MmKind::Trellis(5), 0).is_err());
    assert!(split_scales(&[0u8; 10], 16, 16).is_err());
}

/// Codebook and search experiment (docs/FORMAT.md §7.3):
/// `cargo test --profile ci -p mm-quant trellis::tests::experiment -- --ignored --nocapture`.
#[test]
#[ignore]
fn experiment() {
    let tiles = 48;
    let data = gaussian(42, tiles * TILE_LEN);
    let muls: [(&str, u32); 4] = [
        ("mul1 0x83DCD12D", 0x83DC_D12D),
        ("1mad-mul 34038481", 34038481),
        ("0x9E3779B1", 0x9E37_79B1),
        ("0xCBAC1FED", 0xCBAC_1FED),
    ];
    for (name, m) in muls {
        let table: Vec<f32> = (0..1u32 << 16).map(|s| code_with(s, m) as f32).collect();
        let cb = Codebook::from_table(&table);
        for k in BITS {
            let mut ws = Workspace::new(k, &cb);
            let mut words = vec![0u32; 8 * k as usize];
            let mut best = (f64::MAX, 0.0);
            for gain in [0.8f32, 0.85, 0.9, 0.95, 1.0] {
                let t0 = std::time::Instant::now();
                let mut e = 0.0;
                for t in data.chunks_exact(TILE_LEN) {
                    let tt: Vec<f32> = t.iter().map(|v| v * 147.8 * gain).collect();
                    e += encode_tile(&tt, &cb, &mut ws, &mut words) as f64
                        / (147.8f64 * gain as f64).powi(2);
                }
                let mse = e / data.len() as f64;
                if mse < best.0 {
                    best = (mse, gain);
                }
                if gain == 0.9 {
                    eprintln!(
                        "{name} k{k} gain 0.9: mse {mse:.5} ({:.2} ms/tile)",
                        t0.elapsed().as_secs_f64() * 1e3 / tiles as f64
                    );
                }
            }
            eprintln!("{name} k{k}: best mse {:.5} at gain {}", best.0, best.1);
        }
    }
    eprintln!("wrap window {WRAP_WINDOW}");
}

/// `tr(ΔW·H·ΔWᵀ)` of a dequantized weight.
fn proxy_loss(w: &[f32], wq: &[f32], h: &[f64], rows: usize, cols: usize) -> f64 {
    (0..rows)
        .map(|r| {
            let d: Vec<f64> = (0..cols)
                .map(|c| (w[r * cols + c] - wq[r * cols + c]) as f64)
                .collect();
            (0..cols)
                .map(|i| d[i] * (0..cols).map(|j| h[i * cols + j] * d[j]).sum::<f64>())
                .sum::<f64>()
        })
        .sum()
}

#[test]
fn ldlq_with_an_identity_hessian_is_the_plain_search() {
    use crate::gptq::Hessian;
    let (rows, cols) = (32, 64);
    let w: Vec<f32> = gaussian(3, rows * cols).iter().map(|v| v * 0.02).collect();
    let eye: Vec<f64> = (0..cols * cols)
        .map(|i| if i % (cols + 1) == 0 { 2.0 } else { 0.0 })
        .collect();
    let h = Hessian::from_matrix(cols, eye, 100).unwrap();
    let a = quantize_trellis(&w, rows, cols, 3, 5).unwrap();
    let b = ldlq::quantize_trellis_ldlq(&w, rows, cols, &h, 3, 0.01, 5).unwrap();
    assert_eq!(a.scales, b.scales);
    assert_eq!(a.codes, b.codes);
}

#[test]
fn ldlq_lowers_the_output_error_of_correlated_inputs() {
    use crate::gptq::Hessian;
    let (rows, cols, n) = (32, 128, 512);
    let w: Vec<f32> = gaussian(4, rows * cols).iter().map(|v| v * 0.02).collect();
    // Inputs with a few strong shared directions and uneven channel scales.
    let z = gaussian(5, n * 8);
    let e = gaussian(6, n * cols);
    let mix = gaussian(7, 8 * cols);
    let x: Vec<f32> = (0..n * cols)
        .map(|i| {
            let (s, c) = (i / cols, i % cols);
            let shared: f32 = (0..8).map(|f| z[s * 8 + f] * mix[f * cols + c]).sum();
            (shared + 0.3 * e[i]) * (1.0 + (c % 7) as f32)
        })
        .collect();
    let mut h = Hessian::new(cols);
    h.add_rows(&x, n).unwrap();
    for k in BITS {
        let plain = quantize_trellis(&w, rows, cols, k, 9).unwrap();
        let ld = ldlq::quantize_trellis_ldlq(&w, rows, cols, &h, k, 0.01, 9).unwrap();
        let dq = |q: &quantize::TrellisWeight| {
            dequantize_trellis(k, rows, cols, &q.codes, &q.scales).unwrap()
        };
        let (lp, ll) = (
            proxy_loss(&w, &dq(&plain), h.matrix(), rows, cols),
            proxy_loss(&w, &dq(&ld), h.matrix(), rows, cols),
        );
        eprintln!(
            "trellis{k}: output error plain {lp:.4e}, LDLQ {ll:.4e} ({:.2}x)",
            lp / ll
        );
        assert!(
            ll < 0.8 * lp,
            "trellis{k}: LDLQ {ll} is not clearly below the plain search {lp}"
        );
    }
}
