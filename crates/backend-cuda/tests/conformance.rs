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
    // The kernels in use and those not yet run on a GPU (next_kernels).
    for next in [false, true] {
        let b = b.clone().device_sampling(true).next_kernels(next);
        let r = run_supported(&b.clone().exact(), Tolerance::F32, &[]);
        assert!(
            r.fails.is_empty(),
            "exact, next {next}: {}",
            r.fails.join("\n")
        );
        // Every op of the suite runs on the GPU (quantized weights apart: below).
        assert!(r.skipped.is_empty(), "ops not run: {:?}", r.skipped);
        let tc = b.clone().tensor_cores(true);
        let r = run_supported(&tc, Tolerance::F32, &[("matmul", Tolerance::F16_OPERANDS)]);
        assert!(
            r.fails.is_empty(),
            "default, next {next}: {}",
            r.fails.join("\n")
        );
    }
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
    // MM_COMPILE_ONLY=attention,moe: only those files (a quick look while
    // editing a kernel; CI compiles every file).
    let only = std::env::var("MM_COMPILE_ONLY").unwrap_or_default();
    let files = compile::ALL
        .iter()
        .filter(|k| only.is_empty() || only.split(',').any(|o| o == k.name));
    for arch in [80, 90] {
        for k in files.clone() {
            let ptx = compile::compile(k, arch).unwrap_or_else(|e| panic!("{e}"));
            // MM_PTX_DIR=DIR: the PTX kept, for `ptxas -v` (registers,
            // spills) without a GPU.
            if let Ok(dir) = std::env::var("MM_PTX_DIR") {
                let file = format!("{dir}/{}_sm{arch}.ptx", k.name);
                std::fs::write(&file, &ptx).unwrap_or_else(|e| panic!("{file}: {e}"));
            }
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

/// The default mode's decode kernel of the integer and GGUF formats
/// (8-bit activations in two passes, integer dot products) computes what
/// it says: the dequantized weight times the activations as those two
/// passes round them (the CPU's Q8_0 rounding, `q8::residual_row`), at the
/// f32 tolerance, for 1, 3, 8 and 11 generated rows, alone and listed
/// among prompt rows.
#[test]
fn cuda_q8_decode_matches_its_reference() {
    use mm_backend_cpu::ops::qmatmul::q8::residual_row;
    use mm_backend_cuda::ops::qmatmul::affine;
    use mm_backend_cuda::qlayout::{self, QLayout};
    use mm_conformance::{ggml_weights, mm_weights, rel_l2};
    use mm_core::backend::Backend;
    use mm_core::{RowKind, Tensor};
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let Some(b) = gpu() else { return };
    let b = b.tensor_cores(true);
    let mut rng = StdRng::seed_from_u64(5);
    let mut tested = 0;
    for (f, w) in ggml_weights(3)
        .unwrap()
        .into_iter()
        .chain(mm_weights(3).unwrap())
    {
        if !qlayout::supports(f) {
            continue;
        }
        let l = QLayout::from_weight(&w).unwrap();
        if affine(&l.lut).is_none() || !matches!(l.bits, 4 | 8) {
            continue;
        }
        tested += 1;
        let (m, k) = w.dims2().unwrap();
        let dense = mm_quant::dequantize_ref(&w).unwrap();
        for n in [1usize, 3, 8, 11] {
            let x: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
            // x̂ = x − e₂, e₁ = x − d₁q₁, e₂ = e₁ − d₂q₂ (rows padded to 32).
            let kp = k.div_ceil(32) * 32;
            let mut xh = Vec::with_capacity(n * k);
            for row in x.chunks_exact(k) {
                let mut p = row.to_vec();
                p.resize(kp, 0.0);
                let (mut e1, mut e2) = (vec![0.0; kp], vec![0.0; kp]);
                residual_row(32, &p, &mut e1);
                residual_row(32, &e1, &mut e2);
                xh.extend((0..k).map(|c| p[c] - e2[c]));
            }
            let want = mm_backend_cpu::ops::matmul::matmul_ref(&xh, &dense, None, n, k, m);
            let gen = vec![RowKind::Generated; n];
            let xt = Tensor::from_vec(vec![n, k], x.clone()).unwrap();
            let got = b
                .matmul_rows(&xt, &w, None, &gen)
                .unwrap()
                .to_vec()
                .unwrap();
            let e = rel_l2(&got, &want);
            assert!(e <= 1e-5, "{} n={n}: rel err {e:.2e}", f.name());
            // The same rows after a prompt row (a mixed step's row list).
            let mut kinds = vec![RowKind::Prompt];
            kinds.extend(gen);
            let mut x2 = x[..k].to_vec();
            x2.extend(&x);
            let xt = Tensor::from_vec(vec![n + 1, k], x2).unwrap();
            let got = b
                .matmul_rows(&xt, &w, None, &kinds)
                .unwrap()
                .to_vec()
                .unwrap();
            let e = rel_l2(&got[m..], &want);
            assert!(e <= 1e-5, "{} n={n} listed rows: rel err {e:.2e}", f.name());
        }
    }
    assert!(tested >= 8, "only {tested} weights took the 8-bit path");
}

/// The grouped expert op on the GPU (every row on 8-bit activations in
/// two passes) against the scalar experts, for every integer and GGUF
/// format, with a host route; then routing and experts together
/// (`moe_routed`) against the host routing, under the three families'
/// rules. Two products in sequence, each at the CPU default's 8-bit
/// residual tolerance.
#[test]
fn cuda_moe_conforms() {
    use mm_conformance::{check_moe_experts, check_moe_routed};
    let Some(b) = gpu() else { return };
    let b = b.tensor_cores(true);
    let tol = Tolerance {
        rel_l2: 2.0 * Tolerance::Q8_RESIDUAL.rel_l2,
    };
    check_moe_experts(&b, 0, tol, tol).unwrap();
    check_moe_routed(&b, 0, tol).unwrap();
    // Prompt rows of the shared expert go through the dense matmuls, on
    // the tensor cores (f16 operands).
    let f16 = Tolerance::F16_OPERANDS;
    mm_conformance::check_moe_shared(&b, 0, tol, f16).unwrap();
    // The shared expert in the expert launches (next_kernels).
    mm_conformance::check_moe_shared(&b.next_kernels(true), 0, tol, f16).unwrap();
}

/// A shared expert folded into the expert launches (decode rows) gives the
/// bits of running it apart through the dense matmuls and adding.
#[test]
fn cuda_fused_shared_expert_is_bitwise_apart() {
    use mm_core::backend::Backend;
    use mm_core::weight::{MmFormat, MmKind};
    use mm_core::{MoeExperts, RowKind, Tensor, WeightFormat};
    use rand::{Rng, SeedableRng};
    let Some(b) = gpu() else { return };
    let b = b.next_kernels(true);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let (e, h, i) = (8, 256, 512);
    let f = WeightFormat::Mm(MmFormat::new(MmKind::IntSym(4), 128).unwrap());
    let mut w = |r, c| mm_conformance::moe::moe_weight(f, r, c, &mut rng).unwrap();
    let sets: Vec<Vec<_>> = [(i, h), (i, h), (h, i)]
        .iter()
        .map(|&(r, c)| (0..e).map(|_| w(r, c)).collect())
        .collect();
    let shared = [w(i, h), w(i, h), w(h, i)];
    let mut experts = MoeExperts {
        gate: sets[0].iter().collect(),
        up: sets[1].iter().collect(),
        down: sets[2].iter().collect(),
        shared: None,
    };
    let (rule, _) = mm_conformance::moe::moe_rules(e).swap_remove(0);
    for n in [1usize, 5] {
        let x: Vec<f32> = (0..n * h).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let logits: Vec<f32> = (0..n * e).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
        let x = b.upload(&Tensor::from_vec(vec![n, h], x).unwrap()).unwrap();
        let logits = b
            .upload(&Tensor::from_vec(vec![n, e], logits).unwrap())
            .unwrap();
        let kinds = vec![RowKind::Generated; n];
        experts.shared = None;
        let routed = b
            .moe_routed(&x, &logits, None, &rule, &experts, &kinds)
            .unwrap();
        let g = b.matmul_rows(&x, &shared[0], None, &kinds).unwrap();
        let u = b.matmul_rows(&x, &shared[1], None, &kinds).unwrap();
        let s = b.silu_mul(&g, &u).unwrap();
        let s = b.matmul_rows(&s, &shared[2], None, &kinds).unwrap();
        let apart = b.add(&routed, &s).unwrap().to_vec().unwrap();
        experts.shared = Some([&shared[0], &shared[1], &shared[2]]);
        let fused = b
            .moe_routed(&x, &logits, None, &rule, &experts, &kinds)
            .unwrap();
        let fused = fused.to_vec().unwrap();
        let diff = fused
            .iter()
            .zip(&apart)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(diff, 0, "n={n}: {diff} of {} values differ", fused.len());
    }
}

/// The routing kernel picks the host's experts (`mm_core::router::route`)
/// and gives their weights within 1e-6 (the H100's first run at 64
/// experts, softmax: one weight of 296 a unit in the last place apart, exp
/// in double rounded once against the host's f32 exp), over random logits
/// for the
/// three families' rules at 8, 64 and 256 experts (ties are not drawn).
#[test]
fn cuda_moe_route_matches_the_host() {
    use mm_conformance::moe::moe_rules;
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let Some(b) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(11);
    for e in [8usize, 64, 256] {
        for (mut rule, with_bias) in moe_rules(e) {
            rule.top_k = if e == 8 { rule.top_k } else { 8 };
            let n = 37;
            let logits: Vec<f32> = (0..n * e).map(|_| rng.gen_range(-4.0f32..4.0)).collect();
            let bias: Option<Vec<f32>> =
                with_bias.then(|| (0..e).map(|_| rng.gen_range(-0.5f32..0.5)).collect());
            let want = mm_core::router::route(&logits, bias.as_deref(), &rule).unwrap();
            let (ids, wts) = mm_backend_cuda::ops::moe::route_to_host(
                b.runtime(),
                &logits,
                bias.as_deref(),
                &rule,
            )
            .unwrap();
            assert_eq!(ids, want.ids, "{e} experts, {rule:?}");
            for (g, w) in wts.iter().zip(&want.weights) {
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs(),
                    "{e} experts, {rule:?}: {g} vs {w}"
                );
            }
        }
    }
}

/// Sampling on the GPU against the host's selection
/// (`mm_conformance::sample`): every parameter family (greedy, temperature,
/// top-k up to and past the vocabulary, top-p, min-p, all three, penalties
/// and bias) on random logits with ties, NaN and −∞, at the vocabularies of
/// Llama-2 (32000), Qwen2/3 (151936) and Gemma 3 (262144), 1 to 64 rows.
/// Greedy ids must be the host's; a draw that differs must lie within
/// `SAMPLE_TOL` of the exact (f64) interval of its candidate (the host's
/// f32 running sums drift further at these sizes: the test prints how
/// far). The small cases run in
/// `cuda_backend_conforms` (`check_sample`).
#[test]
fn cuda_sample_matches_the_host() {
    let Some(b) = gpu() else { return };
    let (mut near, mut rows, mut drift) = (0, 0, 0.0f64);
    for (i, (vocab, n)) in [
        (32000usize, 1usize),
        (32000, 64),
        (151936, 1),
        (151936, 8),
        (151936, 33),
        (262144, 2),
        (262144, 16),
    ]
    .into_iter()
    .enumerate()
    {
        let r = mm_conformance::check_sample_large(&b, vocab, n, i as u64)
            .unwrap_or_else(|e| panic!("{e}"));
        near += r.near;
        drift = drift.max(r.ref_slack);
        rows += n;
    }
    eprintln!(
        "{rows} rows: {near} draws differed from the host's, each within {:.0e} of exact \
         (the host's own draws within {drift:.1e})",
        mm_conformance::SAMPLE_TOL
    );
}

/// The logits rows the engine samples on the host cross the bus alone,
/// in the order asked.
#[test]
fn cuda_rows_read_back() {
    use mm_core::backend::Backend;
    use mm_core::Tensor;
    let Some(b) = gpu() else { return };
    let v: Vec<f32> = (0..35).map(|i| i as f32).collect();
    let t = b
        .upload(&Tensor::from_vec(vec![5, 7], v.clone()).unwrap())
        .unwrap();
    assert!(!t.is_host());
    for rows in [vec![1usize, 2, 4], vec![4, 0], vec![3], vec![]] {
        let want: Vec<f32> = rows
            .iter()
            .flat_map(|&r| v[r * 7..r * 7 + 7].to_vec())
            .collect();
        assert_eq!(t.rows_to_vec(&rows).unwrap(), want, "{rows:?}");
    }
    assert!(t.rows_to_vec(&[5]).is_err());
}
