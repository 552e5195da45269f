//! Conformance of the grouped expert op (`Backend::moe_experts`) against
//! its scalar twin `ops::moe::moe_experts_ref`, for experts of every weight
//! format a backend takes: dense F32/F16/BF16, every GGML block format and
//! every metal-marlin format.

use mm_backend_cpu::ops::moe::{moe_experts_ref, swiglu_ref};
use mm_backend_cpu::ops::qmatmul::testing::{random_blocks, random_dense};
use mm_core::router::route;
use mm_core::{
    Backend, GroupScore, HostBytes, MoeExperts, MoeRoute, MoeScoring, Result, RouterParams,
    RowKind, WeightData, WeightFormat,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{check, mixed_kinds, randv, up, Tolerance};

/// Hidden and intermediate width: whole 256-blocks (K-quants) and whole
/// groups of every metal-marlin group size.
const WIDTH: usize = 256;
/// Experts per set; the last is never chosen.
const EXPERTS: usize = 4;

/// One `[rows, cols]` weight of `format` (K-quants as random blocks, other
/// GGML formats and metal-marlin formats from their reference quantizers
/// over uniform values, dense formats random).
pub fn moe_weight(
    format: WeightFormat,
    rows: usize,
    cols: usize,
    rng: &mut StdRng,
) -> Result<WeightData> {
    use WeightFormat as F;
    let seed = rng.gen::<u64>();
    let bytes = match format {
        F::F32 | F::F16 | F::BF16 => random_dense(format, rows * cols, seed),
        F::Q2K | F::Q3K | F::Q4K | F::Q5K | F::Q6K => random_blocks(format, rows, cols, seed),
        F::Mm(f) => {
            let v = randv(rng, rows * cols);
            return mm_quant::mm::quantize_rtn(&v, rows, cols, f)?.into_weight_data();
        }
        _ => mm_quant::ggml::quantize(format, &randv(rng, rows * cols))?,
    };
    WeightData::new(format, vec![rows, cols], HostBytes::owned(bytes))
}

/// Gate, up and down weights of `e` experts of `format`, `WIDTH` square.
fn expert_sets(format: WeightFormat, e: usize, rng: &mut StdRng) -> Result<Vec<Vec<WeightData>>> {
    (0..3)
        .map(|_| {
            (0..e)
                .map(|_| moe_weight(format, WIDTH, WIDTH, rng))
                .collect()
        })
        .collect()
}

/// Every format the check covers.
pub fn moe_formats() -> Result<Vec<WeightFormat>> {
    use mm_quant::mm::{MmFormat, MmKind};
    let mut v = vec![WeightFormat::F32, WeightFormat::F16, WeightFormat::BF16];
    v.extend(WeightFormat::GGML_BLOCK);
    for kind in MmKind::ALL {
        for &g in kind.group_sizes() {
            v.push(WeightFormat::Mm(MmFormat::new(kind, g)?));
        }
    }
    Ok(v)
}

/// `moe_experts` for experts of every format in [`moe_formats`] the backend
/// takes, decode-sized and prefill-sized steps with prompt and generated
/// rows mixed, an expert no token chooses and one chosen by every token;
/// dense formats within `dense_tol`, quantized ones within `quant_tol`.
pub fn check_moe_experts(
    b: &dyn Backend,
    seed: u64,
    dense_tol: Tolerance,
    quant_tol: Tolerance,
) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    for format in moe_formats()? {
        if !b.supports_moe(format) {
            continue;
        }
        let tol = if format.is_dense() {
            dense_tol
        } else {
            quant_tol
        };
        let mut sets: [Vec<WeightData>; 3] = Default::default();
        for _ in 0..EXPERTS {
            sets[0].push(moe_weight(format, WIDTH, WIDTH, &mut rng)?);
            sets[1].push(moe_weight(format, WIDTH, WIDTH, &mut rng)?);
            sets[2].push(moe_weight(format, WIDTH, WIDTH, &mut rng)?);
        }
        let experts = MoeExperts {
            gate: sets[0].iter().collect(),
            up: sets[1].iter().collect(),
            down: sets[2].iter().collect(),
            shared: None,
        };
        let deq = |s: &[WeightData]| -> Result<Vec<Vec<f32>>> {
            s.iter().map(mm_quant::dequantize_ref).collect()
        };
        let (g, u, d) = (deq(&sets[0])?, deq(&sets[1])?, deq(&sets[2])?);
        // 40 rows: expert 0 gets every token, so its batch takes the
        // prefill path of the CPU's default precision (from 24 rows).
        for n in [1usize, 5, 40] {
            let top_k = 2;
            let mut ids = Vec::with_capacity(n * top_k);
            let mut weights = Vec::with_capacity(n * top_k);
            for _ in 0..n {
                let other = rng.gen_range(1..EXPERTS as u32 - 1);
                ids.extend([0, other]);
                weights.extend([rng.gen_range(0.1f32..1.0), rng.gen_range(0.1f32..1.0)]);
            }
            let x = randv(&mut rng, n * WIDTH);
            let route = MoeRoute {
                top_k,
                ids: &ids,
                weights: &weights,
            };
            let kinds: Vec<RowKind> = mixed_kinds(n);
            let out =
                b.moe_experts(&up(b, vec![n, WIDTH], x.clone())?, &experts, &route, &kinds)?;
            let reference = moe_experts_ref(&x, &g, &u, &d, &ids, &weights, WIDTH, WIDTH, top_k);
            let label = match format {
                WeightFormat::Mm(f) => format!("{} g{}", format.name(), f.group),
                _ => format.name().to_string(),
            };
            check(&format!("moe_experts {label} n={n}"), &out, &reference, tol)?;
        }
    }
    Ok(())
}

/// Routing rules of the three families: softmax top-k renormalised
/// (Qwen3-MoE, Mixtral); softmax with group-limited greedy top-k scored by
/// each group's best, not renormalised, scaled (DeepSeek-V2); sigmoid plus
/// correction bias with groups scored by their top two, renormalised and
/// scaled (DeepSeek-V3, GLM-4.5+, GLM-4.7-Flash).
pub fn moe_rules(experts: usize) -> Vec<(RouterParams, bool)> {
    let base = RouterParams {
        num_experts: experts,
        top_k: 2,
        scoring: MoeScoring::Softmax,
        norm_topk_prob: true,
        routed_scaling_factor: 1.0,
        n_group: 1,
        topk_group: 1,
        group_score: GroupScore::Max,
    };
    vec![
        (base.clone(), false),
        (
            RouterParams {
                top_k: 3,
                norm_topk_prob: false,
                routed_scaling_factor: 1.5,
                n_group: 4,
                topk_group: 2,
                ..base.clone()
            },
            false,
        ),
        (
            RouterParams {
                top_k: 3,
                scoring: MoeScoring::Sigmoid,
                routed_scaling_factor: 2.5,
                n_group: 4,
                topk_group: 2,
                group_score: GroupScore::Top2Sum,
                ..base
            },
            true,
        ),
    ]
}

/// `moe_routed` (routing and experts) against the host routing
/// ([`mm_core::router::route`]) and `moe_experts_ref`, for experts in a few
/// integer and GGUF formats the backend takes, under each of
/// [`moe_rules`], with 1 and 7 rows of mixed kinds.
pub fn check_moe_routed(b: &dyn Backend, seed: u64, tol: Tolerance) -> Result<()> {
    use mm_core::weight::{MmFormat, MmKind};
    let mut rng = StdRng::seed_from_u64(seed);
    let e = 8;
    let formats = [
        WeightFormat::Q4_0,
        WeightFormat::Q4K,
        WeightFormat::Mm(MmFormat::new(MmKind::IntSym(4), 128)?),
        WeightFormat::Mm(MmFormat::new(MmKind::IntAsym(4), 32)?),
        WeightFormat::Mm(MmFormat::new(MmKind::IntSym(8), 128)?),
    ];
    for format in formats.into_iter().filter(|&f| b.supports_moe(f)) {
        let sets = expert_sets(format, e, &mut rng)?;
        let experts = MoeExperts {
            gate: sets[0].iter().collect(),
            up: sets[1].iter().collect(),
            down: sets[2].iter().collect(),
            shared: None,
        };
        let deq = |s: &[WeightData]| -> Result<Vec<Vec<f32>>> {
            s.iter().map(mm_quant::dequantize_ref).collect()
        };
        let (g, u, d) = (deq(&sets[0])?, deq(&sets[1])?, deq(&sets[2])?);
        for (rule, with_bias) in moe_rules(e) {
            for n in [1usize, 7] {
                let x = randv(&mut rng, n * WIDTH);
                let logits: Vec<f32> = (0..n * e).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
                let bias = with_bias.then(|| randv(&mut rng, e));
                let r = route(&logits, bias.as_deref(), &rule)?;
                let reference =
                    moe_experts_ref(&x, &g, &u, &d, &r.ids, &r.weights, WIDTH, WIDTH, r.top_k);
                let bt = bias.map(|v| up(b, vec![e], v)).transpose()?;
                let out = b.moe_routed(
                    &up(b, vec![n, WIDTH], x)?,
                    &up(b, vec![n, e], logits)?,
                    bt.as_ref(),
                    &rule,
                    &experts,
                    &mixed_kinds(n),
                )?;
                let label = format!(
                    "moe_routed {} {:?} groups {} n={n}",
                    format.name(),
                    rule.scoring,
                    rule.n_group
                );
                check(&label, &out, &reference, tol)?;
            }
        }
    }
    Ok(())
}

/// A shared expert with the routed ones (`MoeExperts::shared`), through
/// `moe_experts` (host routes) and `moe_routed`: as wide as the routed
/// experts (a backend may fold it into their launches) and twice as wide,
/// rows all generated (decode steps) within `tol` and of mixed kinds
/// within `prompt_tol` (a backend may run prompt rows of the shared expert
/// through its dense matmuls at another precision: the CUDA backend's
/// tensor cores take f16 operands); against `moe_experts_ref` plus
/// `swiglu_ref`.
pub fn check_moe_shared(
    b: &dyn Backend,
    seed: u64,
    tol: Tolerance,
    prompt_tol: Tolerance,
) -> Result<()> {
    use mm_core::weight::{MmFormat, MmKind};
    let mut rng = StdRng::seed_from_u64(seed);
    let e = 8;
    let formats = [
        WeightFormat::Q4_0,
        WeightFormat::Mm(MmFormat::new(MmKind::IntSym(4), 128)?),
        WeightFormat::Mm(MmFormat::new(MmKind::IntAsym(4), 32)?),
    ];
    let deq = |s: &[WeightData]| -> Result<Vec<Vec<f32>>> {
        s.iter().map(mm_quant::dequantize_ref).collect()
    };
    for format in formats.into_iter().filter(|&f| b.supports_moe(f)) {
        let sets = expert_sets(format, e, &mut rng)?;
        let (g, u, d) = (deq(&sets[0])?, deq(&sets[1])?, deq(&sets[2])?);
        for inter_s in [WIDTH, 2 * WIDTH] {
            let shared = [
                moe_weight(format, inter_s, WIDTH, &mut rng)?,
                moe_weight(format, inter_s, WIDTH, &mut rng)?,
                moe_weight(format, WIDTH, inter_s, &mut rng)?,
            ];
            let sd = deq(&shared)?;
            let experts = MoeExperts {
                gate: sets[0].iter().collect(),
                up: sets[1].iter().collect(),
                down: sets[2].iter().collect(),
                shared: Some([&shared[0], &shared[1], &shared[2]]),
            };
            let (rule, _) = moe_rules(e).swap_remove(0);
            for (n, generated) in [(1usize, true), (6, true), (7, false)] {
                let x = randv(&mut rng, n * WIDTH);
                let logits: Vec<f32> = (0..n * e).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
                let r = route(&logits, None, &rule)?;
                let routed =
                    moe_experts_ref(&x, &g, &u, &d, &r.ids, &r.weights, WIDTH, WIDTH, r.top_k);
                let s = swiglu_ref(&x, &sd[0], &sd[1], &sd[2], WIDTH, inter_s);
                let reference: Vec<f32> = routed.iter().zip(&s).map(|(a, b)| a + b).collect();
                let kinds = if generated {
                    vec![RowKind::Generated; n]
                } else {
                    mixed_kinds(n)
                };
                let xt = up(b, vec![n, WIDTH], x)?;
                let label = format!(
                    "moe with a shared expert of {inter_s} {} n={n} generated={generated}",
                    format.name()
                );
                let out = b.moe_routed(
                    &xt,
                    &up(b, vec![n, e], logits)?,
                    None,
                    &rule,
                    &experts,
                    &kinds,
                )?;
                let tol = if generated { tol } else { prompt_tol };
                check(&format!("{label} (moe_routed)"), &out, &reference, tol)?;
                let route = MoeRoute {
                    top_k: r.top_k,
                    ids: &r.ids,
                    weights: &r.weights,
                };
                let out = b.moe_experts(&xt, &experts, &route, &kinds)?;
                check(&format!("{label} (moe_experts)"), &out, &reference, tol)?;
            }
        }
    }
    Ok(())
}
