//! Read bandwidth of main memory: the roofline of a decode step, which
//! streams every weight once per token.
//!
//! `cargo run --release -p mm-backend-cpu --example membw -- [THREADS] [MiB]`
//!
//! Each of THREADS threads reads its share of a MiB-sized buffer (default
//! 1024 MiB, far larger than any cache) with wide loads folded into a
//! running XOR, as a GEMV reads its weights; prints GB/s for 5 runs.

use std::time::Instant;

fn read_all(chunk: &[u64]) -> u64 {
    // Eight independent lanes so the loads are not serialized behind one
    // dependency chain (the compiler vectorizes this into 256/512-bit XORs).
    let mut acc = [0u64; 8];
    for c in chunk.chunks_exact(8) {
        for i in 0..8 {
            acc[i] ^= c[i];
        }
    }
    acc.iter().fold(0, |a, b| a ^ b)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1).max(1);
    let mib: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024)
        .max(1);
    let words = (mib << 20) / 8 / (8 * threads) * (8 * threads);
    let buf: Vec<u64> = (0..words as u64).collect();
    let per = words / threads;
    for run in 0..5 {
        let t0 = Instant::now();
        let sink = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(per)
                .map(|c| s.spawn(move || read_all(c)))
                .collect();
            hs.into_iter().fold(0, |a, h| a ^ h.join().unwrap_or(0))
        });
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "run {run}: {threads} thread(s), {:.0} MiB in {:.1} ms: {:.2} GB/s (checksum {})",
            (words * 8) as f64 / (1 << 20) as f64,
            secs * 1e3,
            (words * 8) as f64 / secs / 1e9,
            sink & 0xff
        );
    }
}
