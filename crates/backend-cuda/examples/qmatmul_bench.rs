//! Times the quantized matmul kernels on the GPU at Llama-3 8B/70B shapes
//! (`scripts/test-cuda.sh bench` runs it beside the PyTorch/cuBLAS peers).
//!
//! Weights are random codes and scales in each format's GPU layout,
//! rotated through enough copies that the working set is at least 4× the
//! L2 cache; 20 launches are captured in one CUDA graph and the median of
//! 30 replays is taken per launch. Bytes counted: the codes and group
//! parameters the kernel reads (activations and output are extra).
//! M ≤ 8 runs the decode kernels, larger M the prompt kernel (tensor
//! cores, f16 operands, `tc_matmul`), as the backend does. The decode
//! kernel of the integer and GGUF formats is timed five ways: `q8x2r2`
//! and `q8x2r4` (the default's: 8-bit activations in two passes, two or
//! four weight rows per warp, `qmatmul::launch_q8`; the backend takes four
//! from two activation rows), `q8x1r2` and `q8x1r4` (one pass) and `f32`
//! (the exact mode's). Before timing, each
//! kernel's output is checked against a float64 reference of the layout's
//! values and the f32 activations on its first 64 rows (the `rel err`
//! column: q8x1 rounds activations to 8 bits, ≈4e-3 expected).
//!
//! `qmatmul_bench [--quick] [--trellis]` prints one line per case and
//! writes JSON lines to `$OUT/qmatmul.jsonl` when OUT is set; `--trellis`
//! runs only the trellis formats' cases (at the end of a full run).

use std::io::Write;

use cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use mm_backend_cuda::ops::matmul::Prepared;
use mm_backend_cuda::ops::qmatmul::upload_layout;
use mm_backend_cuda::ops::{qmatmul, tc_matmul};
use mm_backend_cuda::qlayout::QLayout;
use mm_backend_cuda::Runtime;
use mm_core::weight::{MmFormat, MmKind};
use mm_core::{WeightData, WeightFormat};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random_weight(f: WeightFormat, m: usize, k: usize, seed: u64) -> WeightData {
    mm_conformance::random_weight(f, m, k, seed).expect("weight parts")
}

fn median_us(rt: &Runtime, reps: usize, mut f: impl FnMut() -> mm_core::Result<()>) -> f64 {
    let s = &rt.stream;
    for _ in 0..3 {
        f().expect("launch");
    }
    s.synchronize().expect("sync");
    s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .expect("capture");
    for _ in 0..reps {
        f().expect("launch");
    }
    let g = s
        .end_capture(CUgraphInstantiate_flags(0))
        .expect("end capture")
        .expect("a graph");
    let mut ts = Vec::new();
    for i in 0..33 {
        let a = s
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .expect("event");
        g.launch().expect("replay");
        let b = s
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .expect("event");
        let ms = a.elapsed_ms(&b).expect("elapsed");
        if i >= 3 {
            ts.push(ms as f64 * 1e3 / reps as f64);
        }
    }
    ts.sort_by(f64::total_cmp);
    ts[ts.len() / 2]
}

/// ‖y − ref‖/‖ref‖ on the first rows of the output, float64 reference
/// over the layout's values.
fn check(rt: &Runtime, l: &QLayout, q: &Prepared, n: usize, v: Kernel) -> f64 {
    let mut rng = StdRng::seed_from_u64(1);
    let k = l.cols;
    let x: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let xd = rt.stream.clone_htod(&x).expect("upload");
    let mut y = rt.stream.alloc_zeros::<f32>(n * l.rows).expect("alloc");
    run(rt, q, &xd, &mut y, n, l.cols, l.rows, v).expect("launch");
    let y = rt.stream.clone_dtoh(&y).expect("download");
    let rows = l.rows.min(64);
    let w = l.dequantize_rows(0..rows);
    let (mut num, mut den) = (0f64, 0f64);
    for a in 0..n {
        for r in 0..rows {
            let want: f64 = (0..k)
                .map(|c| x[a * k + c] as f64 * w[r * k + c] as f64)
                .sum();
            let got = y[a * l.rows + r] as f64;
            num += (got - want).powi(2);
            den += want * want;
        }
    }
    (num / den).sqrt()
}

/// Which kernel computes rows.
#[derive(Clone, Copy, PartialEq)]
enum Kernel {
    /// f32 activations (`qmatmul::launch`).
    F32,
    /// 8-bit activations in this many passes, this many weight rows per
    /// warp (`qmatmul::launch_q8`).
    Q8(u32, usize),
    /// The tensor cores (`tc_matmul::launch`).
    Tc,
}

impl Kernel {
    fn name(self) -> String {
        match self {
            Kernel::F32 => "f32".into(),
            Kernel::Q8(p, r) => format!("q8x{p}r{r}"),
            Kernel::Tc => "tc".into(),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    rt: &Runtime,
    q: &Prepared,
    x: &cudarc::driver::CudaSlice<f32>,
    y: &mut cudarc::driver::CudaSlice<f32>,
    n: usize,
    k: usize,
    m: usize,
    v: Kernel,
) -> mm_core::Result<()> {
    match (q, v) {
        (Prepared::Quant(w), Kernel::F32) => qmatmul::launch(rt, w, x, None, None, y, n),
        (Prepared::Quant(w), Kernel::Q8(p, r)) => {
            qmatmul::launch_q8(rt, w, x, None, None, None, y, n, p, r)
        }
        _ => tc_matmul::launch(rt, q, x, None, None, y, n, k, m),
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = Runtime::new(0).unwrap_or_else(|e| {
        eprintln!("qmatmul_bench: {e}");
        std::process::exit(2)
    });
    let l2 = 50usize << 20;
    let mut out = std::env::var_os("OUT").map(|d| {
        std::fs::File::create(std::path::Path::new(&d).join("qmatmul.jsonl")).expect("jsonl")
    });
    let int4 = WeightFormat::Mm(MmFormat::new(MmKind::IntSym(4), 128).unwrap());
    let int8 = WeightFormat::Mm(MmFormat::new(MmKind::IntSym(8), 128).unwrap());
    let fp8 = WeightFormat::Mm(MmFormat::new(MmKind::Fp8E4M3, 128).unwrap());
    let shapes: &[(usize, usize)] = if quick {
        &[(14336, 4096), (28672, 8192)]
    } else {
        &[
            (6144, 4096),
            (4096, 4096),
            (14336, 4096),
            (4096, 14336),
            (10240, 8192),
            (8192, 8192),
            (28672, 8192),
            (8192, 28672),
        ]
    };
    let ms_all: &[usize] = if quick {
        &[1, 8]
    } else {
        &[1, 2, 4, 8, 16, 32, 64, 128, 512]
    };
    println!("GPU {} (sm_{})", rt.name, rt.arch);
    if std::env::args().any(|a| a == "--trellis") {
        return trellis(&rt, quick, l2, &mut out);
    }
    println!(
        "{:>6} {:>6} {:>4} {:>10} {:>6} {:>9} {:>7} {:>9}",
        "N", "K", "M", "format", "kernel", "us", "TB/s", "rel err"
    );
    for &(m, k) in shapes {
        let formats = [
            int4,
            WeightFormat::Q4_0,
            WeightFormat::Q4K,
            WeightFormat::Q8_0,
            int8,
            fp8,
            WeightFormat::Q6K,
        ];
        for (fi, &f) in formats.iter().enumerate() {
            // int4 at every M, the others at decode sizes.
            let mlist: Vec<usize> = if fi == 0 { ms_all.to_vec() } else { vec![1] };
            let l = QLayout::from_weight(&random_weight(f, m, k, 7 + fi as u64)).expect("layout");
            let up = || {
                Prepared::Quant(
                    upload_layout(&rt, &l, "bench weight")
                        .expect("upload")
                        .into(),
                )
            };
            let first = up();
            let Prepared::Quant(w0) = &first else {
                unreachable!()
            };
            let (bytes, q8) = (w0.bytes, qmatmul::q8_capable(w0));
            let copies = (4 * l2).div_ceil(bytes).clamp(1, 8);
            let mut ws = vec![first];
            for _ in 1..copies {
                ws.push(up());
            }
            let cases = mlist.iter().flat_map(|&n| {
                let ks: Vec<Kernel> = match n {
                    9.. => vec![Kernel::Tc],
                    _ if q8 => vec![
                        Kernel::Q8(2, 2),
                        Kernel::Q8(2, 4),
                        Kernel::Q8(1, 2),
                        Kernel::Q8(1, 4),
                        Kernel::F32,
                    ],
                    _ => vec![Kernel::F32],
                };
                ks.into_iter().map(move |v| (n, v))
            });
            for (n, v) in cases.collect::<Vec<_>>() {
                let err = check(&rt, &l, &ws[0], n.min(16), v);
                let mut rng = StdRng::seed_from_u64(n as u64);
                let x: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let xd = rt.stream.clone_htod(&x).expect("upload");
                let mut y = rt.stream.alloc_zeros::<f32>(n * m).expect("alloc");
                let mut i = 0;
                let us = median_us(&rt, 20, || {
                    i = (i + 1) % ws.len();
                    run(&rt, &ws[i], &xd, &mut y, n, k, m, v)
                });
                let tbs = bytes as f64 / us / 1e6;
                let tflops = 2.0 * (n * m * k) as f64 / us / 1e6;
                println!(
                    "{m:>6} {k:>6} {n:>4} {:>10} {:>6} {us:>9.1} {tbs:>7.2} {err:>9.1e}",
                    f.name(),
                    v.name()
                );
                if let Some(o) = out.as_mut() {
                    writeln!(o, "{{\"N\":{m},\"K\":{k},\"M\":{n},\"format\":\"{}\",\"kernel\":\"{}\",\"us\":{us:.3},\"bytes\":{bytes},\"tflops\":{tflops:.2},\"err\":{err:.3e}}}", f.name(), v.name()).ok();
                }
            }
        }
    }
    trellis(&rt, quick, l2, &mut out);
}

/// The trellis kernels (`ops::trellis`, docs/FORMAT.md §4.8) at 2, 3 and 4
/// bits on random streams: `mv` (the codes' product, the part that reads
/// the weight) timed as the others, and the whole op (both Hadamard
/// launches included) through the backend; bytes = the tiles.
fn trellis(rt: &std::sync::Arc<Runtime>, quick: bool, l2: usize, out: &mut Option<std::fs::File>) {
    use mm_backend_cuda::ops::trellis;
    use mm_backend_cuda::CudaBackend;
    use mm_core::{Backend, Tensor};
    let shapes: &[(usize, usize)] = if quick {
        &[(14336, 4096), (28672, 8192)]
    } else {
        &[
            (4096, 4096),
            (14336, 4096),
            (4096, 14336),
            (8192, 8192),
            (28672, 8192),
        ]
    };
    let b = CudaBackend::new(0).expect("backend");
    for &(m, k) in shapes {
        for bits in [2u8, 3, 4] {
            let f = WeightFormat::Mm(MmFormat::new(MmKind::Trellis(bits), 0).unwrap());
            let bytes = m * k * bits as usize / 8;
            let copies = (4 * l2).div_ceil(bytes).clamp(1, 8);
            let ws: Vec<WeightData> = (0..copies)
                .map(|i| random_weight(f, m, k, 40 + i as u64))
                .collect();
            let ts: Vec<_> = ws
                .iter()
                .map(|w| trellis::prepare(rt, w).expect("upload"))
                .collect();
            for n in [1usize, 8] {
                let mut rng = StdRng::seed_from_u64(n as u64);
                let x: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let xd = rt.stream.clone_htod(&x).expect("upload");
                let mut y = rt.stream.alloc_zeros::<f32>(n * m).expect("alloc");
                let mut i = 0;
                let us = median_us(rt, 20, || {
                    i = (i + 1) % ts.len();
                    trellis::mv(rt, &ts[i], &xd, &mut y, n)
                });
                // The whole op, launches and all, through the backend.
                let xt = b
                    .upload(&Tensor::from_vec(vec![n, k], x.clone()).unwrap())
                    .unwrap();
                let t0 = std::time::Instant::now();
                let reps = 50;
                for r in 0..reps {
                    let yt = b.matmul(&xt, &ws[r % ws.len()], None).expect("matmul");
                    if r + 1 == reps {
                        yt.to_host().expect("sync");
                    }
                }
                let op_us = t0.elapsed().as_secs_f64() * 1e6 / reps as f64;
                // Check the op against the CPU's dequantized weight on 16 rows.
                let err = if m * k <= 4096 * 4096 {
                    let yt = b.matmul(&xt, &ws[0], None).unwrap().to_host().unwrap();
                    let got = yt.as_slice().unwrap();
                    let wq = mm_quant::dequantize_ref(&ws[0]).unwrap();
                    let (mut num, mut den) = (0f64, 0f64);
                    for r in 0..16.min(m) {
                        let want: f64 = (0..k).map(|c| x[c] as f64 * wq[r * k + c] as f64).sum();
                        num += (got[r] as f64 - want).powi(2);
                        den += want * want;
                    }
                    (num / den).sqrt()
                } else {
                    f64::NAN
                };
                let tbs = bytes as f64 / us / 1e6;
                println!(
                    "{m:>6} {k:>6} {n:>4} {:>10} {:>6} {us:>9.1} {tbs:>7.2} {err:>9.1e}   whole op {op_us:.1} us",
                    f.name(),
                    "mv"
                );
                if let Some(o) = out.as_mut() {
                    writeln!(o, "{{\"N\":{m},\"K\":{k},\"M\":{n},\"format\":\"{}\",\"kernel\":\"trellis_mv\",\"us\":{us:.3},\"op_us\":{op_us:.3},\"bytes\":{bytes},\"err\":{err:.3e}}}", f.name()).ok();
                }
            }
        }
    }
}
