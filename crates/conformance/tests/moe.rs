//! The grouped expert op of the CPU backend against its scalar twin, for
//! experts of every weight format, in the three CPU precisions.

use mm_backend_cpu::{ActPrecision, CpuBackend};
use mm_conformance::{check_moe_experts, Tolerance};

/// Two products in sequence (gate/up, then down), each within `t` of
/// f32: their rounding errors add.
fn twice(t: Tolerance) -> Tolerance {
    Tolerance {
        rel_l2: 2.0 * t.rel_l2,
    }
}

/// The default precision: quantized experts with 8-bit activations plus
/// their remainder (16-bit prompt rows), dense prompt rows with 16-bit
/// operands on AVX2.
#[test]
fn moe_experts_default_precision() {
    for seed in 0..2 {
        check_moe_experts(
            &CpuBackend::new(),
            seed,
            twice(Tolerance::INT16_OPERANDS),
            twice(Tolerance::Q8_RESIDUAL),
        )
        .unwrap();
    }
}

/// The exact mode: f32 activations over every weight's values.
#[test]
fn moe_experts_exact() {
    for seed in 0..2 {
        check_moe_experts(&CpuBackend::exact(), seed, Tolerance::F32, Tolerance::F32).unwrap();
    }
}

/// One 8-bit activation pass (llama.cpp's precision); dense prompt rows
/// as in the default precision. The down product's input `silu(g)·u` is
/// heavy-tailed (a product of two sums), so its 8-bit blocks (256 values
/// for K-quants) lose more than uniform inputs do: measured up to 2.2e-2
/// (Q2_K, one row), hence three single-product bounds.
#[test]
fn moe_experts_one_int8_pass() {
    let b = CpuBackend::with_activations(ActPrecision::Int8);
    let dense = twice(Tolerance::INT16_OPERANDS);
    let quant = Tolerance {
        rel_l2: 3.0 * Tolerance::Q8_ACTIVATIONS.rel_l2,
    };
    check_moe_experts(&b, 0, dense, quant).unwrap();
}

/// A token's experts give the same bits alone as in a batch (prompt and
/// generated rows mixed, experts shared with other tokens), in the three
/// CPU precisions, for dense and quantized experts.
#[test]
fn moe_rows_do_not_depend_on_the_batch() {
    use mm_conformance::moe::moe_weight;
    use mm_core::weight::{MmFormat, MmKind};
    use mm_core::WeightFormat as F;
    use mm_core::{Backend, MoeExperts, MoeRoute, RowKind, Tensor, WeightData};
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let (e, w, n, k) = (4usize, 256usize, 30usize, 2usize);
    let mm4 = F::Mm(MmFormat::new(MmKind::IntSym(4), 128).unwrap());
    for format in [F::F16, F::Q4_0, F::Q4K, mm4] {
        let mk = |rng: &mut rand::rngs::StdRng| moe_weight(format, w, w, rng).unwrap();
        let sets: Vec<Vec<WeightData>> = (0..3)
            .map(|_| (0..e).map(|_| mk(&mut rng)).collect())
            .collect();
        let experts = MoeExperts {
            gate: sets[0].iter().collect(),
            up: sets[1].iter().collect(),
            down: sets[2].iter().collect(),
            shared: None,
        };
        let ids: Vec<u32> = (0..n)
            .flat_map(|t| [(t % e) as u32, ((t + 1 + t / e) % e) as u32])
            .collect();
        let weights: Vec<f32> = (0..n * k).map(|_| rng.gen_range(0.1f32..1.0)).collect();
        let x: Vec<f32> = (0..n * w).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let kinds: Vec<RowKind> = (0..n)
            .map(|i| {
                if i % 3 == 0 {
                    RowKind::Generated
                } else {
                    RowKind::Prompt
                }
            })
            .collect();
        for b in [
            CpuBackend::new(),
            CpuBackend::exact(),
            CpuBackend::with_activations(ActPrecision::Int8),
        ] {
            let run = |t0: usize, t1: usize| -> Vec<f32> {
                let route = MoeRoute {
                    top_k: k,
                    ids: &ids[t0 * k..t1 * k],
                    weights: &weights[t0 * k..t1 * k],
                };
                let xt = Tensor::from_vec(vec![t1 - t0, w], x[t0 * w..t1 * w].to_vec()).unwrap();
                b.moe_experts(&xt, &experts, &route, &kinds[t0..t1])
                    .unwrap()
                    .to_vec()
                    .unwrap()
            };
            let full = run(0, n);
            for t in 0..n {
                let alone = run(t, t + 1);
                assert!(
                    full[t * w..(t + 1) * w]
                        .iter()
                        .zip(&alone)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{b:?} {}: token {t} differs alone",
                    format.name()
                );
            }
        }
    }
}

/// Routing and experts together (`Backend::moe_routed`, the CPU's default:
/// routed on the host) against the host routing and the scalar experts,
/// under the three families' rules, default and exact precision.
#[test]
fn moe_routed_routes_as_the_host() {
    use mm_conformance::check_moe_routed;
    check_moe_routed(&CpuBackend::new(), 0, twice(Tolerance::Q8_RESIDUAL)).unwrap();
    check_moe_routed(&CpuBackend::exact(), 1, Tolerance::F32).unwrap();
}

/// A shared expert folded into the op gives the reference's values.
#[test]
fn moe_shared_expert_conforms() {
    use mm_conformance::check_moe_shared;
    let q8 = twice(Tolerance::Q8_RESIDUAL);
    check_moe_shared(&CpuBackend::new(), 0, q8, q8).unwrap();
    check_moe_shared(&CpuBackend::exact(), 1, Tolerance::F32, Tolerance::F32).unwrap();
}
