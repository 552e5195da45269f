//! MoE expert probe: the grouped op (`ops::moe::moe_experts`, experts in
//! parallel, each expert's matmuls nested) against a loop over experts as a
//! model would write it (one expert after the other, each matmul parallel
//! over its output rows), on the same weights, at the routed-expert shape
//! of GLM-4.7-Flash (hidden 2048, expert width 1536, top-4), fewer experts
//! than its 64 (memory; a step touches at most `n·4` of them anyway).
//! `cargo run --profile ci -p mm-backend-cpu --example moe_probe -- [FORMAT] [EXPERTS]`
//! (FORMAT: a GGML name or F16/BF16/F32, default Q4_0; EXPERTS default 16).
//! Prints wall time per call and the weight bytes the call reads per second.

use std::time::Instant;

use mm_backend_cpu::ops::moe::moe_experts;
use mm_backend_cpu::ops::qmatmul::testing::{random_blocks, random_dense, random_f32};
use mm_backend_cpu::CpuBackend;
use mm_core::{Backend, HostBytes, MoeExperts, MoeRoute, RowKind, Tensor, WeightData};
use mm_core::{Result, WeightFormat as F};

const HIDDEN: usize = 2048;
const INTER: usize = 1536;
const TOP_K: usize = 4;

fn weight(f: F, rows: usize, cols: usize, seed: u64) -> WeightData {
    let bytes = if f.is_dense() {
        random_dense(f, rows * cols, seed)
    } else {
        random_blocks(f, rows, cols, seed)
    };
    WeightData::new(f, vec![rows, cols], HostBytes::owned(bytes)).unwrap()
}

/// The loop a model would write: each chosen expert in turn.
fn per_expert_loop(
    b: &CpuBackend,
    x: &Tensor,
    ex: &MoeExperts,
    route: &MoeRoute,
    kinds: &[RowKind],
) -> Result<Vec<f32>> {
    let (n, h) = x.dims2()?;
    let xs = x.as_slice()?;
    let mut out = vec![0f32; n * h];
    for e in 0..ex.gate.len() {
        let picks: Vec<usize> = (0..n * route.top_k)
            .filter(|&p| route.ids[p] as usize == e)
            .collect();
        if picks.is_empty() {
            continue;
        }
        let rows: Vec<f32> = picks
            .iter()
            .flat_map(|&p| &xs[p / route.top_k * h..][..h])
            .copied()
            .collect();
        let ke: Vec<RowKind> = picks.iter().map(|&p| kinds[p / route.top_k]).collect();
        let xe = Tensor::from_vec(vec![picks.len(), h], rows)?;
        let g = b.matmul_rows(&xe, ex.gate[e], None, &ke)?;
        let u = b.matmul_rows(&xe, ex.up[e], None, &ke)?;
        let y = b.matmul_rows(&b.silu_mul(&g, &u)?, ex.down[e], None, &ke)?;
        let ys = y.as_slice()?;
        for (r, &p) in picks.iter().enumerate() {
            let w = route.weights[p];
            let t = p / route.top_k;
            for (o, v) in out[t * h..(t + 1) * h].iter_mut().zip(&ys[r * h..][..h]) {
                *o += w * v;
            }
        }
    }
    Ok(out)
}

/// Median wall seconds of `f` over at least 1.5 s (after one warm-up).
fn time(f: impl Fn()) -> f64 {
    f();
    let mut v = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < 1.5 || v.len() < 5 {
        let t = Instant::now();
        f();
        v.push(t.elapsed().as_secs_f64());
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let format = match args.get(1).map(String::as_str).unwrap_or("Q4_0") {
        "F32" => F::F32,
        "F16" => F::F16,
        "BF16" => F::BF16,
        name => *F::GGML_BLOCK
            .iter()
            .find(|f| f.name() == name)
            .expect("a GGML format name or F32/F16/BF16"),
    };
    let e: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(16);
    let sets: Vec<Vec<WeightData>> = (0..3)
        .map(|p| {
            (0..e)
                .map(|i| {
                    let (r, c) = if p == 2 {
                        (HIDDEN, INTER)
                    } else {
                        (INTER, HIDDEN)
                    };
                    weight(format, r, c, (p * 1000 + i) as u64)
                })
                .collect()
        })
        .collect();
    let ex = MoeExperts {
        gate: sets[0].iter().collect(),
        up: sets[1].iter().collect(),
        down: sets[2].iter().collect(),
        shared: None,
    };
    let expert_bytes: usize = [&sets[0][0], &sets[1][0], &sets[2][0]]
        .iter()
        .map(|w| w.stored_bytes())
        .sum();
    let b = CpuBackend::new();
    println!(
        "{} experts of {} ({:.1} MiB each), hidden {HIDDEN}, width {INTER}, top-{TOP_K}, {} threads",
        e,
        format.name(),
        expert_bytes as f64 / (1 << 20) as f64,
        rayon::current_num_threads()
    );
    for (n, kind) in [
        (1usize, RowKind::Generated),
        (4, RowKind::Generated),
        (64, RowKind::Prompt),
    ] {
        let x = Tensor::from_vec(vec![n, HIDDEN], random_f32(n * HIDDEN, 7)).unwrap();
        // Distinct experts per token, spread over all of them.
        let ids: Vec<u32> = (0..n)
            .flat_map(|t| (0..TOP_K).map(move |j| ((t * 7 + j * (e / TOP_K).max(1)) % e) as u32))
            .collect();
        let weights = vec![0.25f32; n * TOP_K];
        let route = MoeRoute {
            top_k: TOP_K,
            ids: &ids,
            weights: &weights,
        };
        let kinds = vec![kind; n];
        let active = {
            let mut v = ids.clone();
            v.sort();
            v.dedup();
            v.len()
        };
        let grouped = || {
            moe_experts(&x, &ex, &route, &kinds, &|x, w, k| {
                b.matmul_rows(x, w, None, k)
            })
            .unwrap();
        };
        let looped = || {
            per_expert_loop(&b, &x, &ex, &route, &kinds).unwrap();
        };
        let (tg, tl) = (time(grouped), time(looped));
        let gbs = |t: f64| (active * expert_bytes) as f64 / t / 1e9;
        println!(
            "n={n:3} ({kind:?}, {active:2} experts): grouped {:8.2} ms ({:5.2} GB/s)  per-expert loop {:8.2} ms ({:5.2} GB/s)  loop/grouped {:.2}",
            tg * 1e3,
            gbs(tg),
            tl * 1e3,
            gbs(tl),
            tl / tg
        );
    }
}
