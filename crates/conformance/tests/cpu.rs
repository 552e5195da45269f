//! The conformance suite on the CPU backend.

use mm_backend_cpu::CpuBackend;
use mm_conformance::{run_all, run_quantized, Tolerance};

#[test]
fn cpu_backend_conforms() {
    let fails = run_all(&CpuBackend::new(), Tolerance::F32);
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

#[test]
fn cpu_backend_quantized_matmul_conforms() {
    let fails = run_quantized(&CpuBackend::new(), Tolerance::Q8_ACTIVATIONS);
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}
