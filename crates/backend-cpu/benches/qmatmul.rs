//! Quantized matmul benchmarks on SmolLM2-135M's shapes, with a roofline.
//!
//! `cargo bench -p mm-backend-cpu --bench qmatmul` runs:
//! * `roofline/copy`: a 256 MiB memcpy (read + write bytes) — the memory
//!   bandwidth a weight-streaming GEMV can reach;
//! * `roofline/int8_peak`: independent u8·i8→i32 dot instructions on
//!   registers, all threads — the integer MAC peak (Throughput = MACs);
//! * `gemv` (n = 1) and `gemm` (n = 64, 512) per format and shape
//!   `k→m`, Throughput = weight bytes (so GB/s of weights; GFLOP/s is
//!   2·n·k·m / time).
//!
//! * `mm_gemv` / `mm_gemm_n{n}`: the same for metal-marlin formats
//!   (`int4-g128`, …, named `<format>-g<group>`; Throughput = stored bytes
//!   of codes + scales + zeros), through the prepared (repacked) weight, and
//!   `f32-dense`: the f32 path (`matmul_dense`, Throughput = f32 bytes) that
//!   metal-marlin weights used before their kernels existed.
//!
//! On x86 (AVX2, AVX-512 VNNI), formats with a row-interleaved form (Q4_0,
//! Q4_1, Q8_0, int4, int8, fp4, mxfp4) are also run through it
//! (`<format>-il`, `ops::qmatmul::il`, what the backend uses there); the
//! plain rows are the kernels used elsewhere (ARM).
//!
//! `MM_BENCH_FORMATS=Q4_1,Q8_0,int4-g128` narrows the formats (default: all),
//! `MM_BENCH_N=1,64` the row counts, and `MM_QMATMUL_ISA` picks the ISA.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mm_backend_cpu::ops::matmul::matmul_dense;
use mm_backend_cpu::ops::qmatmul::il;
use mm_backend_cpu::ops::qmatmul::mm::{matmul_mm, prepare};
use mm_backend_cpu::ops::qmatmul::testing::{random_blocks, random_f32};
use mm_backend_cpu::ops::qmatmul::{matmul_q, Isa};
use mm_core::weight::{MmFormat, MmKind};
use mm_core::{HostBytes, Tensor, WeightData, WeightFormat as F};
use rayon::prelude::*;

const FORMATS: [F; 10] = F::GGML_BLOCK;

/// (k, m): q/o, k/v, gate/up, down projections and the LM head.
const SHAPES: [(usize, usize); 5] = [
    (576, 1536),
    (1536, 576),
    (576, 576),
    (576, 192),
    (576, 49152),
];

fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name).ok().map(|v| {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

fn roofline(c: &mut Criterion) {
    let mut g = c.benchmark_group("roofline");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let len = 256 << 20;
    let src = vec![1u8; len];
    let mut dst = vec![0u8; len];
    g.throughput(Throughput::Bytes(2 * len as u64));
    g.bench_function("copy", |b| {
        b.iter(|| {
            // One contiguous chunk per thread, so all cores pull bandwidth.
            let per = len / rayon::current_num_threads();
            dst.par_chunks_mut(per)
                .zip(src.par_chunks(per))
                .for_each(|(d, s)| d.copy_from_slice(s));
            black_box(&dst);
        })
    });
    #[cfg(target_arch = "x86_64")]
    {
        let iters = 1u64 << 22;
        let threads = rayon::current_num_threads() as u64;
        // 8 accumulators × 32 MACs per instruction.
        g.throughput(Throughput::Elements(iters * 8 * 32 * threads));
        let vnni = Isa::available().contains(&Isa::Avx512Vnni);
        g.bench_function(
            if vnni {
                "int8_peak_vpdpbusd"
            } else {
                "int8_peak_vpmaddubsw"
            },
            |b| {
                b.iter(|| {
                    (0..threads).into_par_iter().for_each(|_| {
                        // SAFETY: features checked through Isa::available.
                        black_box(unsafe {
                            if vnni {
                                peak_vnni(iters)
                            } else {
                                peak_avx2(iters)
                            }
                        });
                    })
                })
            },
        );
    }
    g.finish();
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
unsafe fn peak_vnni(iters: u64) -> i32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_epi8(3);
    let b = _mm256_set1_epi8(-2);
    let mut acc = [_mm256_setzero_si256(); 8];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_dpbusd_epi32(*v, a, b);
        }
    }
    let mut s = _mm256_setzero_si256();
    for v in acc {
        s = _mm256_add_epi32(s, v);
    }
    _mm256_extract_epi32(s, 0)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn peak_avx2(iters: u64) -> i32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_epi8(3);
    let b = _mm256_set1_epi8(-2);
    let one = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); 8];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_add_epi32(*v, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), one));
        }
    }
    let mut s = _mm256_setzero_si256();
    for v in acc {
        s = _mm256_add_epi32(s, v);
    }
    _mm256_extract_epi32(s, 0)
}

fn qmatmul(c: &mut Criterion) {
    let formats: Vec<F> = match env_list("MM_BENCH_FORMATS") {
        Some(names) => FORMATS
            .into_iter()
            .filter(|f| names.iter().any(|n| n == f.name()))
            .collect(),
        None => FORMATS.to_vec(),
    };
    let ns: Vec<usize> = env_list("MM_BENCH_N")
        .map(|v| v.iter().filter_map(|s| s.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 64, 512]);
    eprintln!("qmatmul ISA: {}", Isa::detect().name());
    for &n in &ns {
        let mut g = c.benchmark_group(if n == 1 {
            "gemv".to_string()
        } else {
            format!("gemm_n{n}")
        });
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        for &f in &formats {
            for &(k, m) in &SHAPES {
                // The LM head only ever sees the last position; K-quants
                // need rows of whole 256-value super-blocks (576 is not).
                if (m == 49152 && n > 64) || k % f.block().0 != 0 {
                    continue;
                }
                let w = random_blocks(f, m, k, 1);
                let x = random_f32(n * k, 2);
                g.throughput(Throughput::Bytes(w.len() as u64));
                g.bench_with_input(
                    BenchmarkId::new(f.name(), format!("{k}x{m}")),
                    &(),
                    |b, _| b.iter(|| black_box(matmul_q(f, &w, &x, n, k, m).unwrap())),
                );
                let wd = WeightData::new(f, vec![m, k], HostBytes::owned(w)).unwrap();
                if il::active(Isa::detect(), &wd) {
                    let p = il::prepare(&wd).unwrap();
                    g.bench_with_input(
                        BenchmarkId::new(format!("{}-il", f.name()), format!("{k}x{m}")),
                        &(),
                        |b, _| b.iter(|| black_box(il::matmul_il(&p, &x, n).unwrap())),
                    );
                }
            }
        }
        g.finish();
    }
}

/// metal-marlin formats benchmarked (kind, group).
const MM_FORMATS: [(MmKind, u32); 12] = [
    (MmKind::IntSym(4), 128),
    (MmKind::IntSym(4), 64),
    (MmKind::IntSym(4), 32),
    (MmKind::IntAsym(4), 128),
    (MmKind::IntSym(8), 128),
    (MmKind::IntSym(3), 128),
    (MmKind::IntSym(2), 128),
    (MmKind::Nf4, 128),
    (MmKind::Fp8E4M3, 128),
    (MmKind::Fp8E5M2, 0),
    (MmKind::Fp4E2M1, 128),
    (MmKind::Mxfp4, 32),
];

/// Decode and prefill shapes of SmolLM2-135M's MLP (gate/up, down).
const MM_SHAPES: [(usize, usize); 2] = [(576, 1536), (1536, 576)];

fn mm_qmatmul(c: &mut Criterion) {
    let wanted = env_list("MM_BENCH_FORMATS");
    let keep = |name: &str| wanted.as_ref().is_none_or(|w| w.iter().any(|n| n == name));
    let ns: Vec<usize> = env_list("MM_BENCH_N")
        .map(|v| v.iter().filter_map(|s| s.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 64]);
    for &n in &ns {
        let mut g = c.benchmark_group(if n == 1 {
            "mm_gemv".to_string()
        } else {
            format!("mm_gemm_n{n}")
        });
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        for &(k, m) in &MM_SHAPES {
            let x = random_f32(n * k, 2);
            for &(kind, group) in &MM_FORMATS {
                let f = MmFormat::new(kind, group).unwrap();
                let name = format!("{}-g{group}", kind.name());
                // Groups must divide the row (576 is not a multiple of 128).
                if !keep(&name) || (group != 0 && k % group as usize != 0) {
                    continue;
                }
                let wf = random_f32(m * k, 3);
                let w = mm_quant::mm::quantize_rtn(&wf, m, k, f)
                    .unwrap()
                    .into_weight_data()
                    .unwrap();
                let p = prepare(&w).unwrap();
                g.throughput(Throughput::Bytes(w.stored_bytes() as u64));
                g.bench_with_input(BenchmarkId::new(&name, format!("{k}x{m}")), &(), |b, _| {
                    b.iter(|| black_box(matmul_mm(&p, &x, n).unwrap()))
                });
                if il::active(Isa::detect(), &w) {
                    let p = il::prepare(&w).unwrap();
                    g.bench_with_input(
                        BenchmarkId::new(format!("{name}-il"), format!("{k}x{m}")),
                        &(),
                        |b, _| b.iter(|| black_box(il::matmul_il(&p, &x, n).unwrap())),
                    );
                }
            }
            if keep("f32-dense") {
                let w = WeightData::from_f32(vec![m, k], &random_f32(m * k, 3)).unwrap();
                let xt = Tensor::from_vec(vec![n, k], x.clone()).unwrap();
                g.throughput(Throughput::Bytes(4 * (m * k) as u64));
                g.bench_with_input(
                    BenchmarkId::new("f32-dense", format!("{k}x{m}")),
                    &(),
                    |b, _| b.iter(|| black_box(matmul_dense(&xt, &w, None).unwrap())),
                );
            }
        }
        g.finish();
    }
}

criterion_group!(benches, roofline, qmatmul, mm_qmatmul);
criterion_main!(benches);
