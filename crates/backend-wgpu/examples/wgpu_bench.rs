//! Times the wgpu matmul kernel (`shaders/matmul.wgsl`) on whatever
//! adapter wgpu opens (`MM_WGPU_ADAPTER`, `MM_WGPU_TIER` as for the
//! backend): Llama-3 8B shapes, decode (M = 1) and small batches, for
//! int4/int8 g128, Q4_0, Q4_K, Q8_0 and bf16 weights.
//!
//! Weights are random (`mm_conformance::random_weight`), rotated through
//! enough copies that the working set is at least `--cache-mb` (default
//! 256) so the GPU's caches hold none; each case runs 3 untimed calls,
//! then `--reps` calls (default 50) between two waits for the GPU, and the
//! wall-clock time per call is reported: what a decode step pays, host
//! recording included. Bytes counted: the weight's GPU form (codes, group
//! parameters, value table). With `--ceiling GBS` (the adapter's measured
//! read bandwidth) the last column gives the fraction of it.
//!
//! `wgpu_bench [--quick] [--ceiling GBS] [--reps N] [--cache-mb MB]`

use mm_backend_wgpu::ops::matmul::matmul;
use mm_backend_wgpu::weight::prepare;
use mm_backend_wgpu::{OpenOptions, Runtime};
use mm_core::weight::{MmFormat, MmKind};
use mm_core::{Tensor, WeightData, WeightFormat};

fn arg(name: &str) -> Option<f64> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn gpu_bytes(rt: &std::sync::Arc<Runtime>, w: &WeightData) -> u64 {
    let g = prepare(rt, w).expect("upload");
    g.bytes()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let ceiling = arg("--ceiling");
    let reps = arg("--reps").map_or(if quick { 10 } else { 50 }, |v| v as usize);
    let cache = (arg("--cache-mb").unwrap_or(if quick { 32.0 } else { 256.0 }) * 1e6) as u64;
    let rt = Runtime::open(&OpenOptions::from_env()).unwrap_or_else(|e| {
        eprintln!("wgpu_bench: {e}");
        std::process::exit(2)
    });
    println!("adapter: {}", rt.describe());
    let mm = |kind, g| WeightFormat::Mm(MmFormat::new(kind, g).expect("format"));
    let formats = [
        ("int4 g128", mm(MmKind::IntSym(4), 128)),
        ("int8 g128", mm(MmKind::IntSym(8), 128)),
        ("Q4_0", WeightFormat::Q4_0),
        ("Q4_K", WeightFormat::Q4K),
        ("Q8_0", WeightFormat::Q8_0),
        ("bf16", WeightFormat::BF16),
    ];
    let shapes: &[(usize, usize)] = if quick {
        &[(1024, 1024)]
    } else {
        &[(4096, 4096), (14336, 4096), (4096, 14336), (128256, 4096)]
    };
    let rows: &[usize] = if quick { &[1] } else { &[1, 4, 8] };
    println!(
        "{:>10} {:>7} {:>6} {:>3} {:>10} {:>8} {:>8}",
        "format", "m", "k", "M", "µs/call", "GB/s", "of ceil"
    );
    for (name, f) in formats {
        for &(m, k) in shapes {
            let first = mm_conformance::random_weight(f, m, k, 1).expect("weight");
            let bytes = gpu_bytes(&rt, &first);
            let copies = (cache / bytes.max(1)).clamp(1, 16) as usize;
            let mut ws = vec![first];
            for c in 1..copies {
                let w = mm_conformance::random_weight(f, m, k, 1 + c as u64).expect("weight");
                gpu_bytes(&rt, &w);
                ws.push(w);
            }
            for &n in rows {
                let x = Tensor::from_vec(vec![n, k], vec![0.01; n * k]).expect("x");
                let x = mm_backend_wgpu::buffer::upload(&rt, &x).expect("upload x");
                for w in ws.iter().take(3) {
                    matmul(&rt, &x, w, None).expect("matmul");
                }
                rt.sync().expect("sync");
                let t = std::time::Instant::now();
                for i in 0..reps {
                    matmul(&rt, &x, &ws[i % ws.len()], None).expect("matmul");
                }
                rt.sync().expect("sync");
                let us = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
                let gbs = bytes as f64 / us / 1e3;
                let of = ceiling.map_or("-".into(), |c| format!("{:.0} %", 100.0 * gbs / c));
                println!("{name:>10} {m:>7} {k:>6} {n:>3} {us:>10.1} {gbs:>8.1} {of:>8}");
            }
        }
    }
}
