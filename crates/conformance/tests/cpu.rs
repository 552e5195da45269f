//! The conformance suite on the CPU backend.

use mm_backend_cpu::{ActPrecision, CpuBackend};
use mm_conformance::{run_all, run_all_with, run_quantized, Tolerance};

/// The default precision: f32 everywhere except dense prompt rows, which
/// multiply 15-bit activations by 14-bit weight codes on AVX2.
#[test]
fn cpu_backend_conforms() {
    let b = CpuBackend::new();
    let fails = run_all_with(&b, Tolerance::F32, &[("matmul", Tolerance::INT16_OPERANDS)]);
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

/// One 8-bit activation pass (llama.cpp's precision).
#[test]
fn cpu_exact_backend_conforms() {
    let fails = run_all(&CpuBackend::exact(), Tolerance::F32);
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

#[test]
fn cpu_backend_quantized_matmul_conforms() {
    let b = CpuBackend::with_activations(ActPrecision::Int8);
    let fails = run_quantized(&b, Tolerance::Q8_ACTIVATIONS);
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

/// The default: 8-bit activations plus their 8-bit remainder.
#[test]
fn cpu_backend_residual_activations_conform() {
    let fails = run_quantized(&CpuBackend::new(), Tolerance::Q8_RESIDUAL);
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

#[test]
fn cpu_exact_backend_quantized_matmul_is_f32_precise() {
    // The exact mode widens quantized weights to f32 and keeps activations
    // in f32: within f32 tolerance of the reference, not 8-bit activations'.
    let fails = run_quantized(&CpuBackend::exact(), Tolerance::F32);
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

/// Sampling at real vocabularies (Qwen2/3's 151936, Gemma 3's 262144), one
/// row of every family: the CPU op equals the reference, whose draws stay
/// within `REF_TOL` of their exact (f64) cumulative intervals.
#[test]
fn cpu_sample_at_large_vocabularies() {
    for (seed, vocab) in [(0, 151_936), (1, 151_936), (2, 262_144)] {
        let r = mm_conformance::check_sample_large(&CpuBackend::new(), vocab, 11, seed)
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "vocabulary {vocab}: the reference's draws lie within {:.1e} of exact",
            r.ref_slack
        );
        assert_eq!(r.near, 0);
    }
}
