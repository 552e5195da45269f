use std::time::Instant;
use mm_backend_cpu::ops::qmatmul::testing::{random_blocks, random_f32};
use mm_backend_cpu::ops::qmatmul::{matmul_q_with, Isa};
use mm_core::WeightFormat as F;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(1);
    for f in [F::Q4_1, F::Q8_0, F::Q4_0, F::Q4K, F::Q6K] {
        for &(k, m) in &[(576usize, 1536usize), (576, 192), (1536, 576)] {
            if k % f.block().0 != 0 { continue; }
            let w = random_blocks(f, m, k, 1);
            let x = random_f32(n * k, 2);
            for &isa in Isa::available() {
                if isa == Isa::Scalar { continue; }
                let mut best = f64::MAX;
                for _ in 0..5 {
                    let it = 20;
                    let t = Instant::now();
                    for _ in 0..it { std::hint::black_box(matmul_q_with(isa, f, &w, &x, n, k, m).unwrap()); }
                    best = best.min(t.elapsed().as_secs_f64() / it as f64);
                }
                let macs = (n * k * m) as f64;
                println!("{:5} {:11} {k}x{m} n={n}: {:8.1} us  {:6.2} GMAC/s  {:6.2} GB/s", f.name(), isa.name(), best * 1e6, macs / best / 1e9, w.len() as f64 / best / 1e9);
            }
        }
    }
}
