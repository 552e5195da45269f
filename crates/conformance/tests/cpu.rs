//! The conformance suite on the CPU backend.

use mm_backend_cpu::CpuBackend;
use mm_conformance::{run_all, Tolerance};

#[test]
fn cpu_backend_conforms() {
    let fails = run_all(&CpuBackend::new(), Tolerance::F32);
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}
