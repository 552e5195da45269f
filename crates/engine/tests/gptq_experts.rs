//! GPTQ of mixture-of-experts and MLA layers on the tiny fixtures made by
//! transformers: every routed expert, shared expert and MLA projection has
//! a stage and a Hessian; a routed expert's Hessian comes from the tokens
//! routed to it; experts with few tokens take the layer-wide blend; GPTQ
//! beats round-to-nearest on the Hessian-weighted output error of experts
//! with enough tokens (each on the calibration tokens; summed over them on
//! held-out ones, where random-token calibration of 512 tokens leaves a
//! small margin); the per-expert sensitivity and allocation behave.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use mm_backend_cpu::CpuBackend;
use mm_core::Device;
use mm_engine::calib::{
    allocate_experts, complete_expert_stats, measure_experts, names_filter, routed_expert,
    stage_of, CalibOptions, ExpertPolicy, SequentialCalib, WeightStats, STAGES,
};
use mm_formats::open_source;
use mm_models::{load_model, DecoderModel};
use mm_quant::gptq::{gptq_quantize, GptqOptions, Hessian};
use mm_quant::{dequantize_ref, quantize_rtn, MmFormat};

fn tiny(name: &str) -> DecoderModel {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(name);
    let src = open_source(&dir).unwrap();
    let cpu: Arc<dyn mm_core::Backend> = Arc::new(CpuBackend::new());
    load_model(src.as_ref(), &Device::new(cpu.clone(), cpu), &|_, _| {}).unwrap()
}

fn tokens(n: usize, seed: u64) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % 320) as u32
        })
        .collect()
}

fn opts(windows: usize) -> CalibOptions {
    CalibOptions {
        window: 64,
        max_windows: windows,
        min_tokens: 64,
        filter: None,
    }
}

/// Weights of layer `l` in stage `s`, in model order.
fn stage_names(model: &DecoderModel, l: usize, s: usize) -> Vec<String> {
    model
        .linears()
        .iter()
        .map(|x| x.name().to_string())
        .filter(|n| stage_of(n) == Some((l, s)))
        .collect()
}

fn values(model: &DecoderModel, name: &str) -> (Vec<f32>, usize, usize) {
    let lin = model
        .linears()
        .into_iter()
        .find(|x| x.name() == name)
        .unwrap();
    (
        dequantize_ref(&lin.weight).unwrap(),
        lin.weight.shape[0],
        lin.weight.shape[1],
    )
}

/// Hessian-weighted output errors (GPTQ, RTN) of `name` quantized with `h`,
/// measured on `eval`.
fn errors(
    model: &DecoderModel,
    name: &str,
    h: &Hessian,
    eval: &Hessian,
    fmt: MmFormat,
) -> (f64, f64) {
    let (w, rows, cols) = values(model, name);
    let opts = GptqOptions {
        act_order: true,
        static_groups: true,
        ..Default::default()
    };
    let g = gptq_quantize(&w, rows, cols, h, fmt, &opts)
        .unwrap()
        .dequantize()
        .unwrap();
    let r = quantize_rtn(&w, rows, cols, fmt)
        .unwrap()
        .dequantize()
        .unwrap();
    (
        eval.output_error(&w, &g, rows).unwrap(),
        eval.output_error(&w, &r, rows).unwrap(),
    )
}

/// Every stage of layer 1 (the sparse one) of each MoE fixture: which
/// weights get a Hessian, how many rows each routed expert saw, the blend,
/// and GPTQ against RTN.
#[test]
fn experts_get_hessians_from_their_tokens_and_gptq_beats_rtn() {
    let fmt = MmFormat::parse("int4", 0).unwrap();
    let (windows, window) = (8, 64);
    for (fixture, top_k) in [
        ("qwen3-moe", 2),
        ("mixtral", 2),
        ("glm4-moe", 2),
        ("glm4-moe-lite", 2),
        ("deepseek-v2", 2),
    ] {
        let mut model = tiny(fixture);
        let toks = tokens(windows * window, 7);
        let mut seq = SequentialCalib::new(&model, &toks, &opts(windows)).unwrap();
        let mut held =
            SequentialCalib::new(&model, &tokens(windows * window, 99), &opts(windows)).unwrap();
        seq.advance(&mut model).unwrap();
        held.advance(&mut model).unwrap();
        let policy = ExpertPolicy::default();
        let mut seen = 0;
        let (mut enough, mut gptq_held, mut rtn_held) = (0, 0.0, 0.0);
        for s in 0..STAGES {
            let names = stage_names(&model, 1, s);
            if names.is_empty() {
                continue;
            }
            let mut stats: HashMap<String, WeightStats> = seq
                .calibrate(&mut model, names_filter(names.clone()))
                .unwrap();
            let eval = held
                .hessians(&mut model, names_filter(names.clone()))
                .unwrap();
            // Routed experts: rows are their tokens, top_k per token in all.
            let routed: Vec<&String> = names
                .iter()
                .filter(|n| routed_expert(n).is_some())
                .collect();
            let per_expert: Vec<usize> = routed
                .iter()
                .map(|n| stats.get(*n).map_or(0, |s| s.hessian.n_samples()))
                .collect();
            if !routed.is_empty() {
                let weights_per_expert = routed.len() / 8;
                let total: usize = per_expert.iter().sum();
                assert_eq!(
                    total,
                    windows * window * top_k * weights_per_expert,
                    "{fixture} stage {s}: routed rows"
                );
            }
            // Every other weight sees every token.
            for n in names.iter().filter(|n| routed_expert(n).is_none()) {
                let rows = stats[n].hessian.n_samples();
                assert!(
                    rows == windows * window || n.contains("kv_b_proj"),
                    "{fixture} {n}: {rows} rows"
                );
            }
            let before: HashMap<String, usize> = routed
                .iter()
                .map(|n| {
                    (
                        (*n).clone(),
                        stats.get(*n).map_or(0, |s| s.hessian.n_samples()),
                    )
                })
                .collect();
            let blended =
                complete_expert_stats(&mut seq, &mut model, &names, &mut stats, &policy).unwrap();
            for n in &routed {
                let cols = values(&model, n).2;
                let thin = before[*n] < policy.min_tokens(cols);
                assert_eq!(
                    blended.iter().any(|b| &b.name == *n),
                    thin,
                    "{fixture} {n}: {} tokens, blend from {}",
                    before[*n],
                    policy.min_tokens(cols)
                );
                assert_eq!(
                    stats[*n].hessian.n_samples(),
                    before[*n].max(policy.min_tokens(cols))
                );
                assert!(stats[*n].cross.is_none());
            }
            for n in &names {
                seen += 1;
                let h = &stats[n].hessian;
                let (g, r) = errors(&model, n, h, h, fmt);
                let is_routed = routed_expert(n).is_some();
                if !is_routed || before[n] >= policy.min_tokens(h.cols()) {
                    assert!(
                        g < r,
                        "{fixture} {n}: GPTQ {g} vs RTN {r} on its calibration tokens"
                    );
                }
                if is_routed && before[n] >= policy.min_tokens(h.cols()) {
                    if let Some(e) = eval.get(n) {
                        let (g, r) = errors(&model, n, h, e, fmt);
                        enough += 1;
                        gptq_held += g;
                        rtn_held += r;
                    }
                }
            }
        }
        // q/k/v or the MLA projections, o, gate/up and down of every
        // expert and of the shared experts.
        let quantizable = model
            .linears()
            .iter()
            .filter(|x| stage_of(x.name()).is_some_and(|s| s.0 == 1))
            .count();
        assert_eq!(seen, quantizable, "{fixture}");
        assert!(enough > 0, "{fixture}: no expert had enough tokens");
        // Measured: qwen3-moe 0.958 (16 expert weights with enough tokens).
        assert!(
            gptq_held < rtn_held,
            "{fixture}: held-out GPTQ {gptq_held} vs RTN {rtn_held} over {enough} expert weights"
        );
    }
}

/// The MLA projections of GLM-4.7-Flash's shape are staged in forward
/// order: q_a and kv_a first, their up-projections next, o after.
#[test]
fn mla_projections_have_stages() {
    let model = tiny("glm4-moe-lite");
    let mut got: Vec<(String, usize)> = model
        .linears()
        .iter()
        .filter_map(|x| {
            stage_of(x.name())
                .filter(|s| s.0 == 1)
                .map(|s| (x.name().to_string(), s.1))
        })
        .filter(|(n, _)| n.contains("self_attn"))
        .collect();
    got.sort();
    let p = "model.layers.1.self_attn.";
    let want: Vec<(String, usize)> = [
        ("kv_a_proj_with_mqa", 0),
        ("kv_b_proj", 1),
        ("o_proj", 2),
        ("q_a_proj", 0),
        ("q_b_proj", 1),
    ]
    .iter()
    .map(|(n, s)| (format!("{p}{n}.weight"), *s))
    .collect();
    assert_eq!(got, want);
}

/// Sensitivity of every routed expert at four formats: errors fall with
/// more bits, bits are the stored sizes, frequencies are the routed share,
/// and the allocation meets its budget.
#[test]
fn expert_sensitivity_and_allocation() {
    let mut model = tiny("qwen3-moe");
    let (windows, window) = (8, 64);
    let toks = tokens(windows * window, 5);
    let formats: Vec<MmFormat> = ["int2", "int3", "int4", "int8"]
        .iter()
        .map(|f| MmFormat::parse(f, 32).unwrap())
        .collect();
    let rtn = |_: &str, v: &[f32], rows, cols, _: &Hessian, f: MmFormat| {
        quantize_rtn(v, rows, cols, f)?.dequantize()
    };
    let costs = measure_experts(
        &mut model,
        &toks,
        &opts(windows),
        &formats,
        &|f, _| Ok(f),
        &ExpertPolicy::default(),
        &rtn,
        &|_, _| {},
    )
    .unwrap();
    assert_eq!(costs.len(), 8, "one MoE layer of 8 experts");
    let n = (windows * window) as f64;
    let tokens: usize = costs.iter().map(|c| c.tokens).sum();
    assert_eq!(tokens, windows * window * 2, "top-2");
    for c in &costs {
        assert_eq!(c.weights.len(), 3);
        assert_eq!(c.params, 3 * 32 * 64);
        assert!((c.frequency - (c.tokens as f64 + 1.0) / (n + 1.0)).abs() < 1e-12);
        for k in 1..formats.len() {
            assert!(
                c.errors[k] < c.errors[k - 1],
                "expert {}: {:?}",
                c.expert,
                c.errors
            );
            assert!(c.bits[k] > c.bits[k - 1]);
        }
        // int4 g32: 4 bits + an F16 scale per 32 = 4.5 bits per weight.
        assert!(
            (c.bits[2] / c.params as f64 - 4.5).abs() < 1e-9,
            "{}",
            c.bits[2]
        );
    }
    let params: usize = costs.iter().map(|c| c.params).sum();
    for target in [2.5, 3.0, 3.5, 4.5, 6.0] {
        let pick = allocate_experts(&costs, target).unwrap();
        let bits: f64 = costs.iter().zip(&pick).map(|(c, &k)| c.bits[k]).sum();
        let bpw = bits / params as f64;
        assert!(bpw <= target + 1e-12, "target {target}: {bpw}");
        // Within one expert's largest step (int4 → int8: 4 bits on 1/8 of
        // the weights) of the target.
        assert!(bpw > target - 0.5 - 1e-9, "target {target}: {bpw}");
    }
    let e = allocate_experts(&costs, 2.0).unwrap_err().to_string();
    assert!(e.contains("cannot be met") && e.contains("2.500"), "{e}");
    assert!(allocate_experts(&costs, f64::NAN).is_err());
}
