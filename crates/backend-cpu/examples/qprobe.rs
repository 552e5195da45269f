//! Quick kernel probe: CPU time (all threads, from /proc/self/stat) per
//! quantized matmul, robust against other processes sharing the cores.
//! `cargo run --release -p mm-backend-cpu --example qprobe -- N [FORMATS]`
use mm_backend_cpu::ops::qmatmul::testing::{random_blocks, random_f32};
use mm_backend_cpu::ops::qmatmul::{matmul_q_with, Isa};
use mm_core::WeightFormat as F;
use std::time::Instant;

fn cpu_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(1);
    let names = args
        .get(2)
        .cloned()
        .unwrap_or("Q4_1,Q8_0,Q4_0,Q4_K,Q6_K".into());
    let all = F::GGML_BLOCK;
    for f in all
        .into_iter()
        .filter(|f| names.split(',').any(|s| s == f.name()))
    {
        for &(k, m) in &[(576usize, 1536usize), (576, 192), (1536, 576)] {
            if k % f.block().0 != 0 {
                continue;
            }
            let w = random_blocks(f, m, k, 1);
            let x = random_f32(n * k, 2);
            for &isa in Isa::available().iter().filter(|&&i| i != Isa::Scalar) {
                let _ = matmul_q_with(isa, f, &w, &x, n, k, m).unwrap();
                let (c0, t0) = (cpu_secs(), Instant::now());
                let mut it = 0;
                while t0.elapsed().as_secs_f64() < 1.0 || cpu_secs() - c0 < 0.5 {
                    std::hint::black_box(matmul_q_with(isa, f, &w, &x, n, k, m).unwrap());
                    it += 1;
                }
                let cpu = (cpu_secs() - c0) / it as f64;
                let wall = t0.elapsed().as_secs_f64() / it as f64;
                let macs = (n * k * m) as f64;
                println!(
                    "{:5} {:11} {k}x{m} n={n}: cpu {:8.1} us ({:6.2} GMAC/s per cpu-s)  wall {:8.1} us",
                    f.name(), isa.name(), cpu * 1e6, macs / cpu / 1e9, wall * 1e6
                );
            }
        }
    }
}
