//! Times sampling on the GPU (`ops::sample`: penalties, bias, greedy or a
//! top-p draw, only the ids read back) against what the engine does
//! without it: the logits read back, then every row sampled on the host
//! (the CPU backend's `sample`, rows in parallel), at a vocabulary of
//! 151936 (Qwen2/3) for 1, 8, 32 and 64 rows. `scripts/test-cuda.sh build`
//! bundles it; `sample_bench [--quick]` prints a table (median of 20 calls
//! after 3 warm-ups, wall time per call, synchronization included) and
//! writes JSON lines to `$OUT/sample.jsonl` when OUT is set.

use std::io::Write;
use std::time::Instant;

use mm_backend_cuda::CudaBackend;
use mm_core::backend::Backend;
use mm_core::{SampleRow, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

const VOCAB: usize = 151_936;

/// Median wall time of `f` in microseconds.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 5 } else { 20 };
    let b = match CudaBackend::new(0) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("sample_bench: no usable GPU: {e}");
            std::process::exit(1);
        }
    };
    let cpu = mm_backend_cpu::CpuBackend::new();
    let mut out = std::env::var_os("OUT").map(|d| {
        std::fs::File::create(std::path::Path::new(&d).join("sample.jsonl")).expect("OUT")
    });
    println!("GPU: {}, vocabulary {VOCAB}", b.describe());
    println!(
        "{:>5} {:>22} {:>12} {:>12} {:>12} {:>9}",
        "rows", "mode", "GPU µs", "read µs", "host µs", "speedup"
    );
    let mut rng = StdRng::seed_from_u64(1);
    for rows in [1usize, 8, 32, 64] {
        let logits = mm_conformance::sample::sample_logits(&mut rng, rows, VOCAB);
        let t = b
            .upload(&Tensor::from_vec(vec![rows, VOCAB], logits).unwrap())
            .unwrap();
        for (mode, temperature, top_p) in
            [("greedy", 0.0f32, 1.0f32), ("top-p 0.9, T 0.7", 0.7, 0.9)]
        {
            let params: Vec<SampleRow> = (0..rows)
                .map(|row| SampleRow {
                    row,
                    temperature,
                    top_p,
                    r: (row as f32 * 0.618).fract(),
                    ..Default::default()
                })
                .collect();
            let gpu = time(reps, || {
                b.sample(&t, &params).unwrap();
            });
            let read = time(reps, || {
                t.to_vec().unwrap();
            });
            let host_t = t.to_host().unwrap();
            let host = time(reps, || {
                cpu.sample(&host_t, &params).unwrap();
            });
            let speedup = (read + host) / gpu;
            println!("{rows:>5} {mode:>22} {gpu:>12.1} {read:>12.1} {host:>12.1} {speedup:>8.1}x");
            if let Some(f) = out.as_mut() {
                writeln!(
                    f,
                    "{{\"rows\":{rows},\"vocab\":{VOCAB},\"mode\":\"{mode}\",\"gpu_us\":{gpu:.2},\
                     \"read_us\":{read:.2},\"host_us\":{host:.2}}}"
                )
                .unwrap();
            }
        }
    }
}
