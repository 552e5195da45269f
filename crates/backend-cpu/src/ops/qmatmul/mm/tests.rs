//! Tests of the metal-marlin kernels: every format × group size (32, 64,
//! 128, per-channel), decode (n = 1..4) and prefill (n > 4) shapes, odd `m`:
//!
//! * the scalar twin against an f64 reference over the dequantized weight
//!   (`mm_quant::dequantize_ref`) and the activations *as quantized*
//!   (integer path: exact integer block sums, so within f32 rounding,
//!   1e-5), and against the f64 reference with the f32 activations:
//!   integer path within the hard 8-bit activation rounding bound (and,
//!   for zero-mean weights over ≥ 32 outputs, 1e-2 relative L2: the
//!   expected error of Q8_0 activations is ~4e-3), float path within
//!   summation-order error (1e-5); see `tests::check_int_path`;
//! * every SIMD ISA against the scalar twin (2e-6 integer path, as the GGML
//!   kernels; 1e-5 float path, whose f32 sums are re-associated), each
//!   output measured against Σ|w·x| so a cancelling sum cannot fail it;
//! * the repacking, the fp8/nf4 SIMD decoders over every code, and the size
//!   of the prepared form.

use mm_core::weight::{MmFormat, MmKind};
use mm_core::{HostBytes, WeightData};
use proptest::prelude::*;

use super::super::testing::{random_f32, Rng};
use super::super::tests::{assert_close, check_int_path, reference, rel_l2, SHAPES};
use super::super::{ActKind, QAct};
use super::*;
use crate::ops::matmul::matmul_ref;

/// A random `[m, k]` weight: every code random (fp8 NaN/∞ codes replaced
/// by finite ones), realistic random f16 scales (E8M0 near 2^-4), random
/// zero-points in `0..=2^b−1` (what quantizers write) or, for odd seeds,
/// anywhere in 0..=255 (legal, FORMAT.md §4.2).
pub(crate) fn random_weight(f: MmFormat, m: usize, k: usize, seed: u64) -> WeightData {
    let mut rng = Rng::new(seed);
    let sizes = f.part_sizes(m, k).unwrap();
    let mut codes: Vec<u8> = (0..sizes.codes).map(|_| rng.next_u64() as u8).collect();
    match f.kind {
        MmKind::Fp8E4M3 => codes.iter_mut().for_each(|c| {
            if *c & 0x7f == 0x7f {
                *c ^= 1
            }
        }),
        MmKind::Fp8E5M2 => codes.iter_mut().for_each(|c| {
            if *c & 0x7c == 0x7c {
                *c ^= 0x40
            }
        }),
        _ => {}
    }
    let ng = m * f.groups_per_row(k);
    let mag = match f.kind {
        MmKind::IntSym(b) | MmKind::IntAsym(b) => 1.0 / (1 << (b - 1)) as f32,
        MmKind::Fp8E4M3 => 1.0 / 448.0,
        MmKind::Fp8E5M2 => 1.0 / 57344.0,
        MmKind::Fp4E2M1 => 1.0 / 6.0,
        _ => 1.0,
    };
    let scales: Vec<u8> = match f.kind {
        MmKind::Mxfp4 => (0..ng).map(|_| 120 + (rng.next_u64() % 8) as u8).collect(),
        _ => (0..ng)
            .flat_map(|_| half::f16::from_f32(rng.f32().abs() * mag).to_le_bytes())
            .collect(),
    };
    let zmask = if !seed.is_multiple_of(2) {
        0xff
    } else {
        (1u16 << f.bits()) as u8 - 1
    };
    let zeros = f.kind.has_zeros().then(|| {
        (0..ng)
            .map(|_| rng.next_u64() as u8 & zmask)
            .collect::<Vec<u8>>()
    });
    WeightData::new_mm(
        f,
        vec![m, k],
        HostBytes::owned(codes),
        HostBytes::owned(scales),
        zeros.map(HostBytes::owned),
    )
    .unwrap()
}

fn check(f: MmFormat, n: usize, k: usize, m: usize, seed: u64) {
    let w = random_weight(f, m, k, seed);
    let p = prepare(&w).unwrap();
    let wd = mm_quant::dequantize_ref(&w).unwrap();
    let x = random_f32(n * k, seed);
    let what = format!("{} g{} n={n} k={k} m={m}", f.name(), f.group);
    let scalar = matmul_mm_with(Isa::Scalar, &p, &x, n).unwrap();
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let (exact, mag) = reference(&wd, &x64, n, k, m);
    let int = p.path == Path::Int;
    if int {
        let mut act = QAct::new();
        act.quantize(ActKind::Q8_0, &x, n, k, q8::quantize_row, false);
        check_int_path(&what, &scalar, &wd, &x, &act, BLOCK, (n, k, m));
        // And statistically (as the GGML kernel tests): within 1e-2 relative
        // L2 over enough outputs (expected ~4e-3) for zero-mean weights.
        // Random asymmetric weights are biased (Σ_t (u − z)·x cancels), which
        // amplifies the relative error at small k: the hard bound above is
        // the check for them.
        if n * m >= 32 && !f.kind.has_zeros() {
            let e = rel_l2(&scalar, &exact);
            assert!(e < 1e-2, "{what}: scalar vs f32 activations {e:.2e}");
        }
    } else {
        assert_close(
            &format!("{what}: scalar vs f64"),
            &scalar,
            &exact,
            &mag,
            1e-5,
        );
    }
    let s64: Vec<f64> = scalar.iter().map(|&v| v as f64).collect();
    for &isa in Isa::available() {
        let y = matmul_mm_with(isa, &p, &x, n).unwrap();
        let tol = if int { 2e-6 } else { 1e-5 };
        assert_close(
            &format!("{what}: {} vs scalar", isa.name()),
            &y,
            &s64,
            &mag,
            tol,
        );
    }
}

use super::super::q8;

#[test]
fn every_format_every_group_every_isa() {
    for (i, &kind) in MmKind::ALL.iter().enumerate() {
        for &g in kind.group_sizes() {
            let f = MmFormat::new(kind, g).unwrap();
            // Per-channel rows of 96·kb values: not a multiple of 64 or 128.
            let unit = if g == 0 { 96 } else { g as usize };
            for &(n, kb, m) in &SHAPES {
                let k = kb * unit;
                check(f, n, k, m, 1000 * i as u64 + 10 * g as u64 + n as u64);
            }
        }
    }
}

/// On aarch64 the NEON integer kernels are bit-exact with the scalar twin
/// (as `aarch64_mm.rs` states), for every integer format and group size.
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_integer_path_is_bit_exact() {
    for (i, &kind) in MmKind::ALL.iter().enumerate() {
        for &g in kind.group_sizes() {
            let f = MmFormat::new(kind, g).unwrap();
            let unit = if g == 0 { 96 } else { g as usize };
            for &(n, kb, m) in &SHAPES {
                let k = kb * unit;
                let p = prepare(&random_weight(f, m, k, 500 + i as u64 + n as u64)).unwrap();
                if p.path != Path::Int {
                    continue;
                }
                let x = random_f32(n * k, 77 + n as u64);
                let s = matmul_mm_with(Isa::Scalar, &p, &x, n).unwrap();
                let y = matmul_mm_with(Isa::Neon, &p, &x, n).unwrap();
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&y), bits(&s), "{} g{g} n={n} k={k} m={m}", f.name());
            }
        }
    }
}

#[test]
fn large_shapes_use_tiled_path() {
    for kind in [
        MmKind::IntSym(4),
        MmKind::IntAsym(3),
        MmKind::Nf4,
        MmKind::Fp8E5M2,
        MmKind::Mxfp4,
    ] {
        let f = MmFormat::new(kind, kind.fixed_group().unwrap_or(128)).unwrap();
        let (n, k, m) = (37, 512, 300);
        let w = random_weight(f, m, k, 7);
        let p = prepare(&w).unwrap();
        let x = random_f32(n * k, 7);
        let s: Vec<f64> = matmul_mm_with(Isa::Scalar, &p, &x, n)
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        let y = matmul_mm(&p, &x, n).unwrap();
        let tol = if p.path == Path::Int { 2e-6 } else { 1e-5 };
        assert!(rel_l2(&y, &s) < tol, "{}", f.name());
    }
}

#[test]
fn repack_round_trips() {
    let mut rng = Rng::new(5);
    for bits in [2u32, 3, 4, 8] {
        for _ in 0..50 {
            let c: Vec<u8> = (0..32)
                .map(|_| (rng.next_u64() as u8) & ((1u16 << bits) - 1) as u8)
                .collect();
            let mut b = vec![0u8; block_bytes(bits)];
            repack_block(bits, &c, 0x80, &mut b);
            assert_eq!(unpack_block(bits, &b, 0x80).to_vec(), c, "{bits} bits");
        }
    }
}

#[test]
fn float_decoders_match_the_codecs_on_every_code() {
    // A block of 32 copies of one code, scale 1, activations (1, 0, …, 0):
    // every ISA must give exactly v(code) (non-finite for NaN/∞ codes).
    for kind in [MmKind::Nf4, MmKind::Fp8E4M3, MmKind::Fp8E5M2] {
        let f = MmFormat::new(kind, 32).unwrap();
        let ncodes = 1usize << f.bits();
        let codes: Vec<u8> = (0..ncodes).flat_map(|c| vec![c as u8; 32]).collect();
        let packed = if f.bits() == 4 {
            codes.chunks(2).map(|c| c[0] | c[1] << 4).collect()
        } else {
            codes.clone()
        };
        let one = half::f16::from_f32(1.0).to_le_bytes();
        let scales: Vec<u8> = (0..ncodes).flat_map(|_| one).collect();
        // One row per code.
        let w = WeightData::new_mm(
            f,
            vec![ncodes, 32],
            HostBytes::owned(packed),
            HostBytes::owned(scales),
            None,
        )
        .unwrap();
        let p = prepare(&w).unwrap();
        let mut x = vec![0.0f32; 32];
        x[0] = 1.0;
        for &isa in Isa::available() {
            let y = matmul_mm_with(isa, &p, &x, 1).unwrap();
            for (c, &yc) in y.iter().enumerate() {
                let v = mm_quant::mm::decode(kind, c as u8, 0);
                if v.is_finite() {
                    assert_eq!(yc, v, "{} code {c:#x} on {}", f.name(), isa.name());
                } else {
                    assert!(
                        !yc.is_finite(),
                        "{} code {c:#x} on {}",
                        f.name(),
                        isa.name()
                    );
                }
            }
        }
    }
}

#[test]
fn prepared_form_is_not_an_f32_copy() {
    for &kind in &MmKind::ALL {
        for &g in kind.group_sizes() {
            let f = MmFormat::new(kind, g).unwrap();
            let w = random_weight(f, 16, 512, 3);
            let p = prepare(&w).unwrap();
            let ratio = p.bytes() as f64 / w.stored_bytes() as f64;
            assert!(
                ratio <= 1.25,
                "{} g{g}: prepared {:.2}× stored",
                f.name(),
                ratio
            );
            assert_eq!(p.codes.len(), w.bytes.len(), "{} g{g}", f.name());
        }
    }
}

#[test]
fn rtn_quantized_weights() {
    // Weights from the reference quantizer: within 8-bit activation error
    // (integer path) or summation error (float path) of f32 activations.
    for (i, &kind) in MmKind::ALL.iter().enumerate() {
        let f = MmFormat::new(kind, kind.fixed_group().unwrap_or(64)).unwrap();
        let (n, k, m) = (3, 256, 40);
        let wf = random_f32(m * k, 11 + i as u64);
        let w = mm_quant::mm::quantize_rtn(&wf, m, k, f)
            .unwrap()
            .into_weight_data()
            .unwrap();
        let wd = mm_quant::dequantize_ref(&w).unwrap();
        let x = random_f32(n * k, 12);
        let r: Vec<f64> = matmul_ref(&x, &wd, None, n, k, m)
            .iter()
            .map(|&v| v as f64)
            .collect();
        let p = prepare(&w).unwrap();
        let tol = if p.path == Path::Int { 1e-2 } else { 1e-5 };
        for &isa in Isa::available() {
            let y = matmul_mm_with(isa, &p, &x, n).unwrap();
            let e = rel_l2(&y, &r);
            assert!(e < tol, "{} {}: {e:.2e}", f.name(), isa.name());
        }
    }
}

#[test]
fn rejects_bad_shapes() {
    let f = MmFormat::new(MmKind::IntSym(4), 0).unwrap();
    let w = random_weight(f, 4, 40, 1); // per-channel, 40 % 32 != 0
    assert!(!supports(&w) && prepare(&w).is_err());
    let p = prepare(&random_weight(f, 4, 64, 1)).unwrap();
    assert!(matmul_mm(&p, &[0.0; 63], 1).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_shapes(ki in 0usize..13, gi in 0usize..4, n in 1usize..12, kb in 1usize..5, m in 1usize..80, seed in any::<u64>()) {
        let kind = MmKind::ALL[ki];
        let gs = kind.group_sizes();
        let g = gs[gi % gs.len()];
        let f = MmFormat::new(kind, g).unwrap();
        let k = kb * if g == 0 { 32 } else { g as usize };
        check(f, n, k, m, seed);
    }
}

#[test]
fn fast_backend_uses_the_kernels_exact_backend_the_f32_path() {
    use crate::CpuBackend;
    use mm_core::{Backend, Tensor};
    let f = MmFormat::new(MmKind::IntSym(4), 128).unwrap();
    let (n, k, m) = (2, 256, 24);
    let x = random_f32(n * k, 9);
    let xt = Tensor::from_vec(vec![n, k], x.clone()).unwrap();
    // Fast, one activation pass: the prepared form is the repacked one, and
    // the result is the kernel's (the default's remainder pass is checked
    // by the conformance suite).
    let w = random_weight(f, m, k, 4);
    let fast = CpuBackend::with_activations(crate::ActPrecision::Int8);
    fast.prepare(&w).unwrap();
    let y = fast.matmul(&xt, &w, None).unwrap();
    // On x86 int4 takes the row-interleaved form (`il.rs`).
    let want = if super::super::il::active(Isa::detect(), &w) {
        let p = crate::il_prepared(&w).unwrap();
        super::super::il::matmul_il(&p, &x, n).unwrap()
    } else {
        let p = crate::mm_prepared(&w).unwrap();
        matmul_mm(&p, &x, n).unwrap()
    };
    assert_eq!(y.as_slice().unwrap(), want.as_slice());
    // Exact: f32 weights and activations; on a weight the fast backend
    // prepared too (dequantized per call then).
    let wd = mm_quant::dequantize_ref(&w).unwrap();
    let r = matmul_ref(&x, &wd, None, n, k, m);
    for w in [random_weight(f, m, k, 4), w] {
        let exact = CpuBackend::exact();
        exact.prepare(&w).unwrap();
        let y = exact.matmul(&xt, &w, None).unwrap();
        let e = rel_l2(
            y.as_slice().unwrap(),
            &r.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        );
        assert!(e < 1e-5, "exact: {e:.2e}");
    }
}
