//! The conformance suite on the GPU: every op the CUDA backend runs
//! against the CPU references (f32 tolerance: the kernels compute in f32,
//! sums in another order), and the NVRTC compilation of every kernel file.
//!
//! Without a GPU (or driver, or NVRTC) the tests say why and pass;
//! `MM_REQUIRE_CUDA=1` (set by `scripts/test-cuda.sh` on the GPU machine)
//! makes that a failure. `MM_REQUIRE_NVRTC=1` (CI, with the NVRTC wheel)
//! does the same for the compile test alone.

use mm_backend_cuda::{compile, CudaBackend};
use mm_conformance::{run_supported, Tolerance};

fn required(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| v == "1")
}

fn gpu() -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(b) => Some(b),
        Err(e) if !required("MM_REQUIRE_CUDA") => {
            eprintln!("skipped (no usable GPU): {e}");
            None
        }
        Err(e) => panic!("MM_REQUIRE_CUDA=1 but: {e}"),
    }
}

/// The exact mode (f32 everywhere) at the f32 tolerance; the default mode
/// alike but for matmuls of more than 8 rows, on the tensor cores.
#[test]
fn cuda_backend_conforms() {
    let Some(b) = gpu() else { return };
    eprintln!("GPU: {}", b.describe());
    let r = run_supported(&b.clone().exact(), Tolerance::F32, &[]);
    assert!(r.fails.is_empty(), "exact: {}", r.fails.join("\n"));
    // Every op of the suite runs on the GPU (quantized weights apart: below).
    assert!(r.skipped.is_empty(), "ops not run: {:?}", r.skipped);
    let tc = b.clone().tensor_cores(true);
    let r = run_supported(&tc, Tolerance::F32, &[("matmul", Tolerance::F16_OPERANDS)]);
    assert!(r.fails.is_empty(), "default: {}", r.fails.join("\n"));
}

/// Every kernel file compiles for Ampere and Hopper.
#[test]
fn every_kernel_compiles() {
    if let Err(e) = compile::nvrtc_version() {
        if required("MM_REQUIRE_NVRTC") || required("MM_REQUIRE_CUDA") {
            panic!("NVRTC required but: {e}");
        }
        eprintln!("skipped (no NVRTC): {e}");
        return;
    }
    for arch in [80, 90] {
        for k in compile::ALL {
            let ptx = compile::compile(k, arch).unwrap_or_else(|e| panic!("{e}"));
            for f in k.functions {
                assert!(
                    ptx.contains(&format!(".entry {f}(")),
                    "kernels/{}.cu for sm_{arch} lacks {f}",
                    k.name
                );
            }
        }
    }
}

/// Bad input is an error naming the problem, never a crash.
#[test]
fn bad_input_is_an_error() {
    use mm_core::backend::Backend;
    use mm_core::{Tensor, WeightData};
    let Some(b) = gpu() else { return };
    let table = WeightData::from_f32(vec![4, 8], &[0.5; 32]).unwrap();
    let e = b.embedding(&[1, 4], &table).unwrap_err().to_string();
    assert!(e.contains("token id 4"), "{e}");
    let x = Tensor::from_vec(vec![2, 8], vec![1.0; 16]).unwrap();
    let w = WeightData::from_f32(vec![3, 7], &[0.5; 21]).unwrap();
    let e = b.matmul(&x, &w, None).unwrap_err().to_string();
    assert!(e.contains("8 columns"), "{e}");
    let g = Tensor::from_vec(vec![2, 4], vec![1.0; 8]).unwrap();
    assert!(b.add(&x, &g).is_err());
}

/// Quantized weights on the GPU: every GGML and metal-marlin format with a
/// GPU layout; exact at the f32 tolerance (f32 activations and sums,
/// unlike the CPU's 8-bit activation kernels), the default mode (prompt
/// rows on the tensor cores) at the f16-operand one.
#[test]
fn cuda_quantized_matmul_conforms() {
    use mm_core::backend::{Backend, Op};
    use mm_core::WeightFormat;
    let Some(b) = gpu() else { return };
    let fails = mm_conformance::run_quantized(&b.clone().exact(), Tolerance::F32);
    assert!(fails.is_empty(), "exact: {}", fails.join("\n"));
    let fails =
        mm_conformance::run_quantized(&b.clone().tensor_cores(true), Tolerance::F16_OPERANDS);
    assert!(fails.is_empty(), "default: {}", fails.join("\n"));
    let left: Vec<_> = WeightFormat::GGML_BLOCK
        .into_iter()
        .filter(|&f| !b.supports(Op::Matmul, Some(f)))
        .map(|f| f.name())
        .collect();
    assert!(left.is_empty(), "GGML formats left to the CPU: {left:?}");
}
