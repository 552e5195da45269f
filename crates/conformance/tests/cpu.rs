//! The conformance suite on the CPU backend.

use mm_backend_cpu::{ActPrecision, CpuBackend};
use mm_conformance::{run_all, run_quantized, Tolerance};

#[test]
fn cpu_backend_conforms() {
    let fails = run_all(&CpuBackend::new(), Tolerance::F32);
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

/// One 8-bit activation pass (llama.cpp's precision).
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
