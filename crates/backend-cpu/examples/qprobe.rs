//! Quick kernel probe: CPU time (all threads, from /proc/self/stat) per
//! quantized or dense matmul, robust against other processes sharing the
//! cores; wall time and GB/s of weights beside it, and the fastest run.
//! `cargo run --release -p mm-backend-cpu --example qprobe -- N [FORMATS]`
//! (FORMATS: GGML names and F32, F16, BF16, comma-separated).
//! `qprobe smol N F16,BF16`: every linear of SmolLM2-135M (30 layers, and
//! the LM head for N = 1; far larger than the caches) once per step, dense
//! formats: the matmul part of a decode (N = 1) or prefill step, from
//! memory.
//! `QPROBE_ITERS=I` runs each probe exactly I times and `QPROBE_SHAPE=KxM`
//! keeps one shape, for `perf stat -e cycles:u` (robust against other
//! processes and clock changes on a shared machine).
use mm_backend_cpu::ops::matmul::dense::{self, Simd};
use mm_backend_cpu::ops::qmatmul::testing::{random_blocks, random_dense, random_f32};
use mm_backend_cpu::ops::qmatmul::{dense16, il, il16, matmul_q_with, Isa};
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

/// Times `f` for at least a second and prints one line.
fn probe(label: &str, (n, k, m): (usize, usize, usize), bytes: usize, f: impl Fn() -> Vec<f32>) {
    let _ = f();
    let (c0, t0) = (cpu_secs(), Instant::now());
    let mut it = 0;
    let iters: Option<usize> = std::env::var("QPROBE_ITERS")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut best = f64::INFINITY;
    while iters.map_or(
        t0.elapsed().as_secs_f64() < 1.0 || cpu_secs() - c0 < 0.5,
        |i| it < i,
    ) {
        let t = Instant::now();
        std::hint::black_box(f());
        best = best.min(t.elapsed().as_secs_f64());
        it += 1;
    }
    let cpu = (cpu_secs() - c0) / it as f64;
    let wall = t0.elapsed().as_secs_f64() / it as f64;
    let macs = (n * k * m) as f64;
    println!(
        "{label:20} {k}x{m} n={n}: cpu {:8.1} us ({:6.2} GMAC/s per cpu-s)  wall {:8.1} us ({:5.1} GB/s)  best {:8.1} us ({:6.2} GMAC/s)",
        cpu * 1e6,
        macs / cpu / 1e9,
        wall * 1e6,
        bytes as f64 / wall / 1e9,
        best * 1e6,
        macs / best / 1e9
    );
}

/// Runs `step` once untimed, then for 3 s: (wall, CPU) seconds per step.
fn time_steps(step: impl Fn()) -> (f64, f64) {
    step();
    let (c0, t0) = (cpu_secs(), Instant::now());
    let mut it = 0;
    while t0.elapsed().as_secs_f64() < 3.0 {
        step();
        it += 1;
    }
    let wall = t0.elapsed().as_secs_f64() / it as f64;
    (wall, (cpu_secs() - c0) / it as f64)
}

/// SmolLM2-135M's layer linears (k, m) in the order a token runs them (the
/// LM head, for the last token only, is added for decode).
fn smol_shapes() -> Vec<(usize, usize)> {
    let layer = [
        (576, 576),
        (576, 192),
        (576, 192),
        (576, 576),
        (576, 1536),
        (576, 1536),
        (1536, 576),
    ];
    (0..30).flat_map(|_| layer).collect()
}

/// `qprobe smol N Q4_0,…`: every linear of SmolLM2 in a GGML block format
/// through `ops::matmul::matmul_with` (the backend's entry point, with its
/// repacking and precision choice), default precision unless
/// `QPROBE_PREC=int8`.
fn smol_q(n: usize, names: &str) {
    use mm_backend_cpu::ops::matmul::{matmul_with, ActPrecision};
    use mm_core::{HostBytes, Tensor, WeightData};
    let prec = match std::env::var("QPROBE_PREC").as_deref() {
        Ok("int8") => ActPrecision::Int8,
        _ => ActPrecision::Int8Residual,
    };
    for f in F::GGML_BLOCK
        .into_iter()
        .filter(|f| names.split(',').any(|s| s == f.name()))
    {
        let mut shapes = smol_shapes();
        if n == 1 {
            shapes.push((576, 49152));
        }
        let ws: Vec<_> = shapes
            .into_iter()
            .enumerate()
            .map(|(i, (k, m))| {
                let b = random_blocks(f, m, k, i as u64);
                WeightData::new(f, vec![m, k], HostBytes::owned(b)).unwrap()
            })
            .collect();
        let bytes: usize = ws.iter().map(|w| w.bytes.len()).sum();
        let macs: usize = ws.iter().map(|w| w.numel() * n).sum();
        let xs: Vec<Tensor> = [576usize, 1536]
            .iter()
            .map(|&k| Tensor::from_vec(vec![n, k], random_f32(n * k, 2)).unwrap())
            .collect();
        let step = || {
            for w in &ws {
                let x = if w.shape[1] == 576 { &xs[0] } else { &xs[1] };
                std::hint::black_box(matmul_with(x, w, None, prec).unwrap());
            }
        };
        let (wall, cpu) = time_steps(step);
        println!(
            "smol {} {prec:?} n={n}: {:.2} ms/step ({:.0} tok/s), cpu {:.2} ms, {:.1} GB/s of weights, {:.1} GMAC/s",
            f.name(), wall * 1e3, n as f64 / wall, cpu * 1e3, bytes as f64 / wall / 1e9,
            macs as f64 / wall / 1e9
        );
    }
}

fn smol(n: usize, names: &str) {
    smol_q(n, names);
    for f in [F::F32, F::F16, F::BF16]
        .into_iter()
        .filter(|f| names.split(',').any(|s| s == f.name()))
    {
        let mut shapes = smol_shapes();
        if n == 1 {
            shapes.push((576, 49152));
        }
        let ws: Vec<_> = shapes
            .into_iter()
            .enumerate()
            .map(|(i, (k, m))| (k, m, random_dense(f, m * k, i as u64)))
            .collect();
        let bytes: usize = ws.iter().map(|w| w.2.len()).sum();
        let x = random_f32(n * 1536, 2);
        for &s in Simd::available().iter().filter(|&&s| s != Simd::Scalar) {
            let step = || {
                for (k, m, w) in &ws {
                    std::hint::black_box(
                        dense::matmul_with(s, f, w, &x[..n * k], n, *k, *m).unwrap(),
                    );
                }
            };
            let (wall, cpu) = time_steps(step);
            println!(
                "smol {} {} n={n}: {:.2} ms/step ({:.0} tok/s), cpu {:.2} ms, {:.1} GB/s of weights, {:.1} GMAC/s",
                f.name(), s.name(), wall * 1e3, n as f64 / wall, cpu * 1e3, bytes as f64 / wall / 1e9,
                (bytes / f.block().1 * n) as f64 / wall / 1e9
            );
        }
        // Prompt rows of the default precision: 16-bit operands.
        for &isa in Isa::available().iter().filter(|&&i| i != Isa::Scalar) {
            let step = || {
                for (k, m, w) in &ws {
                    std::hint::black_box(
                        dense16::matmul_dense16_with(isa, f, w, &x[..n * k], n, *k, *m).unwrap(),
                    );
                }
            };
            let (wall, cpu) = time_steps(step);
            println!(
                "smol {} dense16 {} n={n}: {:.2} ms/step ({:.0} tok/s), cpu {:.2} ms, {:.1} GMAC/s",
                f.name(),
                isa.name(),
                wall * 1e3,
                n as f64 / wall,
                cpu * 1e3,
                (bytes / f.block().1 * n) as f64 / wall / 1e9
            );
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("smol") {
        let n = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
        return smol(n, args.get(3).map(String::as_str).unwrap_or("F16,BF16"));
    }
    let n: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(1);
    let names = args
        .get(2)
        .cloned()
        .unwrap_or("Q4_1,Q8_0,Q4_0,Q4_K,Q6_K".into());
    let all = [F::F32, F::F16, F::BF16].into_iter().chain(F::GGML_BLOCK);
    for f in all.filter(|f| names.split(',').any(|s| s == f.name())) {
        for &(k, m) in &[(576usize, 1536usize), (576, 192), (1536, 576), (576, 49152)] {
            let keep = std::env::var("QPROBE_SHAPE").map_or(true, |v| v == format!("{k}x{m}"));
            if k % f.block().0 != 0 || !keep {
                continue;
            }
            let x = random_f32(n * k, 2);
            let shape = (n, k, m);
            if f.is_dense() {
                let w = random_dense(f, m * k, 1);
                if f == F::F32 && std::env::var_os("QPROBE_GEMM").is_some() {
                    let wf: Vec<f32> = bytemuck::cast_slice(&w).to_vec();
                    probe("F32 gemm-crate", shape, w.len(), || {
                        gemm_f32(&x, &wf, n, k, m)
                    });
                    for rb in [16usize, 32, 64, 96] {
                        probe(&format!("F32 gemm-blk{rb}"), shape, w.len(), || {
                            let mut y = vec![0.0f32; n * m];
                            for j0 in (0..m).step_by(rb) {
                                let r = rb.min(m - j0);
                                let mut out = vec![0.0f32; n * r];
                                unsafe {
                                    gemm::gemm(
                                        n,
                                        r,
                                        k,
                                        out.as_mut_ptr(),
                                        1,
                                        r as isize,
                                        false,
                                        x.as_ptr(),
                                        1,
                                        k as isize,
                                        wf[j0 * k..].as_ptr(),
                                        k as isize,
                                        1,
                                        0.0,
                                        1.0,
                                        false,
                                        false,
                                        false,
                                        gemm::Parallelism::None,
                                    );
                                }
                                for i in 0..n {
                                    y[i * m + j0..i * m + j0 + r]
                                        .copy_from_slice(&out[i * r..(i + 1) * r]);
                                }
                            }
                            y
                        });
                    }
                }
                for &s in Simd::available().iter().filter(|&&s| s != Simd::Scalar) {
                    let label = format!("{} {}", f.name(), s.name());
                    probe(&label, shape, w.len(), || {
                        dense::matmul_with(s, f, &w, &x, n, k, m).unwrap()
                    });
                }
                continue;
            }
            let w = random_blocks(f, m, k, 1);
            for &isa in Isa::available().iter().filter(|&&i| i != Isa::Scalar) {
                let label = format!("{} {}", f.name(), isa.name());
                probe(&label, shape, w.len(), || {
                    matmul_q_with(isa, f, &w, &x, n, k, m).unwrap()
                });
            }
            let wd = mm_core::WeightData::new(f, vec![m, k], mm_core::HostBytes::owned(w.clone()))
                .expect("weight");
            if il::supports(&wd) {
                let p = il::prepare(&wd).expect("interleaved form");
                for &isa in Isa::available().iter().filter(|&&i| i != Isa::Scalar) {
                    probe(
                        &format!("{} il {}", f.name(), isa.name()),
                        shape,
                        w.len(),
                        || il::matmul_il_with(isa, &p, &x, n).unwrap(),
                    );
                    probe(
                        &format!("{} il16 {}", f.name(), isa.name()),
                        shape,
                        w.len(),
                        || il16::matmul_il16_with(isa, &p, &x, n).unwrap(),
                    );
                }
            }
        }
    }
}

#[allow(dead_code)]
pub fn gemm_f32(x: &[f32], w: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; n * m];
    unsafe {
        gemm::gemm(
            n,
            m,
            k,
            y.as_mut_ptr(),
            1,
            m as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
    y
}
