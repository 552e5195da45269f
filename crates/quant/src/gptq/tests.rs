//! GPTQ against round-to-nearest and against an unblocked f64 reference.

use super::cholesky::inverse_cholesky_upper;
use super::*;
use crate::mm::{quantize_rtn, GroupQuantizer, MmFormat};

fn all_formats() -> Vec<MmFormat> {
    MmFormat::all()
}

struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let (a, b) = (self.uniform(), self.uniform());
        (-2.0 * a.ln()).sqrt() * (std::f32::consts::TAU * b).cos()
    }
}

fn weights(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed);
    (0..rows * cols).map(|_| r.normal() * 0.05).collect()
}

/// Correlated activations with uneven column scales, like real layer inputs:
/// `x = z·M` with a fixed random mixing matrix and a few large columns;
/// `seed` draws the samples (different seeds: the same distribution).
fn activations(n: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng(cols as u64);
    let k = cols / 2;
    let mix: Vec<f32> = (0..k * cols).map(|_| r.normal()).collect();
    let scale: Vec<f32> = (0..cols)
        .map(|c| if c % 17 == 3 { 8.0 } else { 0.5 + r.uniform() })
        .collect();
    let mut r = Rng(seed);
    let mut x = vec![0f32; n * cols];
    for t in 0..n {
        let z: Vec<f32> = (0..k).map(|_| r.normal()).collect();
        for c in 0..cols {
            let v: f32 = (0..k).map(|j| z[j] * mix[j * cols + c]).sum();
            x[t * cols + c] = (v / (k as f32).sqrt() + 0.3 * r.normal()) * scale[c];
        }
    }
    x
}

fn hessian_of(x: &[f32], n: usize, cols: usize) -> Hessian {
    let mut h = Hessian::new(cols);
    h.add_rows(x, n).unwrap();
    h
}

fn scaled_identity(cols: usize, c: f64) -> Hessian {
    let mut m = vec![0.0; cols * cols];
    (0..cols).for_each(|i| m[i * cols + i] = c);
    Hessian::from_matrix(cols, m, 1).unwrap()
}

#[test]
fn identity_hessian_reproduces_rtn_exactly() {
    let (rows, cols) = (40, 256);
    let w = weights(rows, cols, 1);
    for fmt in all_formats() {
        let rtn = quantize_rtn(&w, rows, cols, fmt).unwrap();
        for (c, static_groups) in [(1.0, false), (3.7, true)] {
            for block_size in [128, 40] {
                let opts = GptqOptions {
                    static_groups,
                    block_size,
                    ..Default::default()
                };
                let (q, st) =
                    gptq_quantize_with_stats(&w, rows, cols, &scaled_identity(cols, c), fmt, &opts)
                        .unwrap();
                assert_eq!(
                    q, rtn,
                    "{fmt} c={c} static={static_groups} block={block_size}"
                );
                assert_eq!((st.dead_columns, st.damp_percent), (0, 0.01));
            }
        }
    }
}

#[test]
fn diagonal_hessian_with_act_order_reproduces_rtn() {
    // A diagonal H feeds no error forward, whatever the column order; act
    // order with static groups must then store exactly RTN's parts.
    let (rows, cols) = (20, 128);
    let w = weights(rows, cols, 2);
    let mut r = Rng(3);
    let mut m = vec![0.0; cols * cols];
    (0..cols).for_each(|i| m[i * cols + i] = 0.1 + r.uniform() as f64 * 10.0);
    let h = Hessian::from_matrix(cols, m, 10).unwrap();
    let opts = GptqOptions {
        act_order: true,
        static_groups: true,
        ..Default::default()
    };
    for fmt in all_formats() {
        let q = gptq_quantize(&w, rows, cols, &h, fmt, &opts).unwrap();
        assert_eq!(q, quantize_rtn(&w, rows, cols, fmt).unwrap(), "{fmt}");
    }
}

/// The reference algorithm without lazy blocks, in f64: every column's error
/// goes straight to all later columns; a group is fitted from its current
/// values when reached.
fn naive_gptq(w: &[f32], rows: usize, cols: usize, h: &Hessian, fmt: MmFormat) -> Vec<f32> {
    let mut hm = h.matrix().to_vec();
    let mut w: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    for i in 0..cols {
        if hm[i * cols + i] == 0.0 {
            hm[i * cols + i] = 1.0;
            (0..rows).for_each(|r| w[r * cols + i] = 0.0);
        }
    }
    let mean = (0..cols).map(|i| hm[i * cols + i]).sum::<f64>() / cols as f64;
    (0..cols).for_each(|i| hm[i * cols + i] += 0.01 * mean);
    let u = inverse_cholesky_upper(&hm, cols).unwrap();
    let gl = fmt.group_len(cols);
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        let row = &mut w[r * cols..(r + 1) * cols];
        let mut q = None;
        for i in 0..cols {
            if i % gl == 0 {
                let cur: Vec<f32> = row[i..i + gl].iter().map(|&v| v as f32).collect();
                q = Some(GroupQuantizer::fit(fmt.kind, &cur).unwrap());
            }
            let x = row[i] as f32;
            let deq = q.unwrap().decode(q.unwrap().encode(x));
            out[r * cols + i] = deq;
            let e = (x as f64 - deq as f64) / u[i * cols + i];
            for j in i + 1..cols {
                row[j] -= e * u[i * cols + j];
            }
        }
    }
    out
}

#[test]
fn blocked_matches_unblocked_reference() {
    let (rows, cols, n) = (48, 256, 600);
    let w = weights(rows, cols, 4);
    let h = hessian_of(&activations(n, cols, 5), n, cols);
    for name in ["int4", "int3-asym", "nf4", "fp4", "mxfp4", "int8"] {
        for group in [0, 32, 128] {
            let Ok(fmt) = MmFormat::parse(name, group) else {
                continue;
            };
            let want = naive_gptq(&w, rows, cols, &h, fmt);
            let e_want = h.output_error(&w, &want, rows).unwrap();
            // 128: groups align with blocks; 7 and 45: groups of 32/128
            // straddle blocks and are fitted with pending updates applied.
            for block_size in [128, 45, 7] {
                let opts = GptqOptions {
                    block_size,
                    ..Default::default()
                };
                let got = gptq_quantize(&w, rows, cols, &h, fmt, &opts)
                    .unwrap()
                    .dequantize()
                    .unwrap();
                let same = got.iter().zip(&want).filter(|(a, b)| a == b).count();
                let e_got = h.output_error(&w, &got, rows).unwrap();
                // Only f32-vs-f64 rounding near code boundaries may differ.
                assert!(
                    same as f64 >= 0.97 * got.len() as f64,
                    "{fmt} block {block_size}: {same}/{} codes agree",
                    got.len()
                );
                assert!(
                    (e_got / e_want - 1.0).abs() < 0.03,
                    "{fmt} block {block_size}: error {e_got} vs reference {e_want}"
                );
            }
        }
    }
}

#[test]
fn gptq_beats_rtn_on_correlated_inputs() {
    let (rows, cols, n) = (64, 256, 1024);
    let w = weights(rows, cols, 6);
    let x = activations(n, cols, 7);
    let h = hessian_of(&x, n, cols);
    // Held-out activations from the same distribution.
    let h_test = hessian_of(&activations(n, cols, 8), n, cols);
    for name in [
        "int4",
        "int3",
        "int2",
        "int4-asym",
        "int3-asym",
        "nf4",
        "fp4",
        "mxfp4",
        "fp8-e4m3",
        "int8",
    ] {
        let group = if name == "mxfp4" { 32 } else { 128 };
        let fmt = MmFormat::parse(name, group).unwrap();
        let rtn = quantize_rtn(&w, rows, cols, fmt)
            .unwrap()
            .dequantize()
            .unwrap();
        let e_rtn = h_test.output_error(&w, &rtn, rows).unwrap();
        for (act_order, static_groups) in [(false, false), (false, true), (true, true)] {
            let opts = GptqOptions {
                act_order,
                static_groups,
                ..Default::default()
            };
            let (q, st) = gptq_quantize_with_stats(&w, rows, cols, &h, fmt, &opts).unwrap();
            let g = q.dequantize().unwrap();
            let ratio = h_test.output_error(&w, &g, rows).unwrap() / e_rtn;
            assert!(
                ratio < 0.9,
                "{fmt} act_order={act_order} static={static_groups}: GPTQ/RTN = {ratio}"
            );
            assert!(st.loss.is_finite() && st.loss > 0.0);
        }
    }
}

#[test]
fn dead_columns_are_zero() {
    let (rows, cols, n) = (16, 64, 200);
    let w = weights(rows, cols, 9);
    let mut x = activations(n, cols, 10);
    let dead = [0usize, 5, 33, 63];
    for t in 0..n {
        for &c in &dead {
            x[t * cols + c] = 0.0;
        }
    }
    let h = hessian_of(&x, n, cols);
    for (fmt, act_order) in [
        (MmFormat::parse("int4", 32).unwrap(), false),
        (MmFormat::parse("int4-asym", 0).unwrap(), true),
        (MmFormat::parse("nf4", 64).unwrap(), false),
    ] {
        let opts = GptqOptions {
            act_order,
            ..Default::default()
        };
        let (q, st) = gptq_quantize_with_stats(&w, rows, cols, &h, fmt, &opts).unwrap();
        assert_eq!(st.dead_columns, dead.len());
        let v = q.dequantize().unwrap();
        for r in 0..rows {
            for &c in &dead {
                assert_eq!(v[r * cols + c], 0.0, "{fmt}: row {r} column {c}");
            }
        }
        assert!(v.iter().all(|v| v.is_finite()));
        assert!(v.iter().any(|&v| v != 0.0));
    }
    // A layer that saw nothing at all: every column dead, all zeros.
    let h0 = Hessian::from_matrix(cols, vec![0.0; cols * cols], 5).unwrap();
    let fmt = MmFormat::parse("int4", 32).unwrap();
    let (q, st) = gptq_quantize_with_stats(&w, rows, cols, &h0, fmt, &Default::default()).unwrap();
    assert_eq!(st.dead_columns, cols);
    assert!(q.dequantize().unwrap().iter().all(|&v| v == 0.0));
}

#[test]
fn dampening_retries_then_errors() {
    let fmt = MmFormat::parse("int4", 0).unwrap();
    let w = weights(2, 2, 11);
    // Eigenvalues 3 and -1: positive definite only from 1× the mean
    // diagonal of extra dampening on (1.0 + damp: singular at exactly 1).
    let h = Hessian::from_matrix(2, vec![1.0, 2.0, 2.0, 1.0], 4).unwrap();
    let (_, st) = gptq_quantize_with_stats(&w, 2, 2, &h, fmt, &Default::default()).unwrap();
    assert_eq!(st.damp_percent, 10.0);
    let h = Hessian::from_matrix(2, vec![1.0, 100.0, 100.0, 1.0], 4).unwrap();
    let e = gptq_quantize(&w, 2, 2, &h, fmt, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not positive definite") && e.contains("dampening 10"),
        "{e}"
    );
}

#[test]
fn invalid_inputs() {
    let (rows, cols) = (4, 64);
    let w = weights(rows, cols, 12);
    let h = scaled_identity(cols, 1.0);
    let g32 = MmFormat::parse("int4", 32).unwrap();
    let err = |w: &[f32], h: &Hessian, fmt, opts: GptqOptions| {
        gptq_quantize(w, rows, cols, h, fmt, &opts)
            .unwrap_err()
            .to_string()
    };
    let act = GptqOptions {
        act_order: true,
        ..Default::default()
    };
    let e = err(&w, &h, g32, act);
    assert!(e.contains("static_groups") && e.contains("g_idx"), "{e}");
    // Per-channel: one group per row, act order alone is fine.
    gptq_quantize(
        &w,
        rows,
        cols,
        &h,
        MmFormat::parse("int4", 0).unwrap(),
        &act,
    )
    .unwrap();
    assert!(err(&w[1..], &h, g32, Default::default()).contains("needs 256 values"));
    assert!(err(&w, &scaled_identity(32, 1.0), g32, Default::default()).contains("32x32"));
    let mut bad = w.clone();
    bad[70] = f32::NAN;
    assert!(err(&bad, &h, g32, Default::default()).contains("row 1, column 6"));
    assert!(err(&w, &Hessian::new(cols), g32, Default::default()).contains("no calibration"));
    let opts = GptqOptions {
        block_size: 0,
        ..Default::default()
    };
    assert!(err(&w, &h, g32, opts).contains("block_size"));
    let opts = GptqOptions {
        damp_percent: -1.0,
        ..Default::default()
    };
    assert!(err(&w, &h, g32, opts).contains("damp_percent"));
    let mut m = vec![0.0; cols * cols];
    m[5 * cols + 5] = -1.0;
    let neg = Hessian::from_matrix(cols, m, 1).unwrap();
    assert!(err(&w, &neg, g32, Default::default()).contains("H[5][5]"));
    // A row length the format cannot hold.
    assert!(gptq_quantize(
        &w[..2 * 48],
        2,
        48,
        &scaled_identity(48, 1.0),
        g32,
        &Default::default()
    )
    .is_err());
}

#[test]
fn scale_refit_keeps_codes_and_lowers_the_output_error() {
    // Codes identical; per row never worse on the calibration Hessian (the
    // objective it solves), and at ≤ 4 bits better in total; not MXFP4.
    let (rows, cols, n) = (24, 128, 512);
    let w = weights(rows, cols, 5);
    let h = hessian_of(&activations(n, cols, 6), n, cols);
    for fmt in all_formats() {
        let base = GptqOptions {
            act_order: true,
            static_groups: true,
            ..Default::default()
        };
        let refit = GptqOptions {
            refit_scales: true,
            ..base
        };
        let a = gptq_quantize(&w, rows, cols, &h, fmt, &base).unwrap();
        let b = gptq_quantize(&w, rows, cols, &h, fmt, &refit).unwrap();
        assert_eq!(a.qweight, b.qweight, "{fmt}: codes");
        assert_eq!(a.zeros, b.zeros, "{fmt}: zero-points");
        let (da, db) = (a.dequantize().unwrap(), b.dequantize().unwrap());
        let mut total = (0f64, 0f64);
        for r in 0..rows {
            let s = r * cols..(r + 1) * cols;
            let ea = h.output_error(&w[s.clone()], &da[s.clone()], 1).unwrap();
            let eb = h.output_error(&w[s.clone()], &db[s], 1).unwrap();
            assert!(eb <= ea * (1.0 + 1e-9), "{fmt} row {r}: {eb} > {ea}");
            total = (total.0 + ea, total.1 + eb);
        }
        if fmt.kind == crate::mm::MmKind::Mxfp4 {
            assert_eq!(a.scales, b.scales);
        } else if fmt.bits() <= 4 {
            // Coarse codes leave room; FP8/INT8 codes may already be best.
            assert!(total.1 < 0.999 * total.0, "{fmt}: {total:?}");
        }
    }
}
