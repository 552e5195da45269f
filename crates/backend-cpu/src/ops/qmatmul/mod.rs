//! `y[n, m] = x[n, k] · w[m, k]ᵀ` with `w` in a GGML block format, computed
//! from the stored bytes in place (fused dequantize-and-dot, no f32 copy).
//!
//! As llama.cpp's `ggml_vec_dot_*`: every activation row is quantized once
//! per call to 8-bit blocks ([`q8`]: Q8_0-style for the 32-element formats,
//! Q8_K for the K-quants), then each output is a sum over blocks of integer
//! dot products scaled by the weight and activation block scales.
//!
//! Kernels, chosen once at run time ([`Isa::detect`]):
//! * [`x86`]: AVX2 (`vpmaddubsw` + `vpmaddwd`) and AVX-512 VNNI
//!   (`vpdpbusd` / `vpdpwssd`), every format;
//! * [`aarch64`]: NEON for the 32-element formats;
//! * [`scalar`]: the portable reference, exact integer arithmetic.
//!
//! metal-marlin's own formats (int2…int8, nf4, fp8, fp4, mxfp4) run through
//! [`mm`]: repacked once at load, then the same activation quantization
//! (integer formats) or f32 activations (nf4, fp8) and the same threading.
//!
//! On x86 (AVX2 or AVX-512 VNNI), Q4_0, Q4_1, Q8_0 and metal-marlin
//! int4/int8 (sym and asym), fp4 and mxfp4 are instead repacked
//! row-interleaved ([`il`]: 16 weight rows per register, no horizontal
//! sums), 1.7–4.3× faster than the plain VNNI kernels on SmolLM2's shapes
//! (docs/BENCHMARKS.md).
//!
//! Threading ([`crate::pool`], [`compute_tiled`]): few activation rows (decode) split the output rows in
//! a handful of equal tasks; many rows (prefill) are tiled into (weight-row
//! block × activation-row group) tasks where a block of weight rows small
//! enough for L1 is swept against groups of 4 activation rows, so every
//! decoded weight block feeds 4 dot products.

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "aarch64")]
mod aarch64_mm;
pub mod dense16;
pub mod il;
pub mod il16;
pub mod mm;
pub mod q8;
pub mod scalar;
pub mod testing;
pub mod trellis;
#[cfg(target_arch = "x86_64")]
pub mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_il;
#[cfg(target_arch = "x86_64")]
mod x86_il16;
#[cfg(target_arch = "x86_64")]
mod x86_mm;

use std::cell::RefCell;
use std::sync::OnceLock;

use mm_core::{Error, Result, WeightFormat};

pub use q8::{ActKind, ActRow, QAct};

/// Instruction set of the quantized kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable scalar code (the reference).
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL + VNNI (on top of AVX2/FMA/F16C).
    Avx512Vnni,
    /// aarch64 NEON.
    Neon,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Neon => "neon",
        }
    }

    /// Every ISA this CPU can run, best last (detected once).
    pub fn available() -> &'static [Isa] {
        static AVAIL: OnceLock<Vec<Isa>> = OnceLock::new();
        AVAIL.get_or_init(Isa::probe)
    }

    fn probe() -> Vec<Isa> {
        #[allow(unused_mut)]
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                v.push(Isa::Avx2);
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
                {
                    v.push(Isa::Avx512Vnni);
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        v.push(Isa::Neon);
        v
    }

    /// The best available ISA, detected once. `MM_QMATMUL_ISA` (`scalar`,
    /// `avx2`, `avx512vnni`, `neon`) selects another one if it is available.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let avail = Isa::available();
            if let Ok(want) = std::env::var("MM_QMATMUL_ISA") {
                if let Some(&i) = avail.iter().find(|i| i.name() == want.trim()) {
                    return i;
                }
            }
            *avail.last().expect("scalar is always available")
        })
    }
}

/// Whether `format` runs through the GGML block kernels of this module
/// (metal-marlin formats have their own, see [`mm`]).
pub fn supports(format: WeightFormat) -> bool {
    !format.is_dense() && !matches!(format, WeightFormat::Mm(_))
}

/// The activation quantization a weight format's kernels consume.
pub fn act_kind(format: WeightFormat) -> ActKind {
    if scalar::is_kquant(format) {
        ActKind::Q8K
    } else {
        ActKind::Q8_0
    }
}

/// Bit-identical row quantizer for `isa`.
fn quantizer(isa: Isa) -> fn(ActKind, &[f32], q8::RowOut) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => |k, x, o| {
            // SAFETY: only reached for ISAs `Isa::available` reported, which
            // include AVX2 and FMA.
            unsafe { x86::quantize_row_avx2(k, x, o) }
        },
        _ => q8::quantize_row,
    }
}

/// Quantizes `x[n, k]` for `format` into `act`.
pub fn quantize_activations(
    isa: Isa,
    format: WeightFormat,
    x: &[f32],
    n: usize,
    k: usize,
    act: &mut QAct,
) {
    act.quantize(
        act_kind(format),
        x,
        n,
        k,
        quantizer(isa),
        isa == Isa::Avx512Vnni,
    );
}

/// Computes `out[r·rows + j] = w[j] · xs[r]` for the `rows = w.len() /
/// row_bytes` weight rows of `w` and up to 4 activation rows `xs`.
///
/// Panics when `isa` is not available on this CPU or the shapes disagree.
pub fn panel(
    isa: Isa,
    format: WeightFormat,
    w: &[u8],
    row_bytes: usize,
    xs: &[ActRow],
    out: &mut [f32],
) {
    let (qk, bb) = format.block();
    assert!(supports(format), "{} is not a block format", format.name());
    assert!(row_bytes > 0 && row_bytes % bb == 0 && w.len() % row_bytes == 0);
    assert!(
        (1..=4).contains(&xs.len()),
        "1 to 4 activation rows per panel"
    );
    let rows = w.len() / row_bytes;
    let nb = row_bytes / bb;
    assert_eq!(out.len(), rows * xs.len(), "panel output size");
    let kind = act_kind(format);
    for x in xs {
        assert_eq!(x.qs.len(), nb * qk, "activation row length");
        assert_eq!(x.d.len(), nb * qk / kind.block());
        match kind {
            ActKind::Q8_0 => {
                assert!(x.isum.len() == nb && x.s.len() == nb);
                if isa == Isa::Avx512Vnni {
                    assert!(
                        x.qu.len() == nb * qk && x.dx8.len() == 8 * nb,
                        "wide activations"
                    );
                }
            }
            ActKind::Q8K => assert_eq!(x.bsums.len(), nb * qk / 16),
        }
    }
    match isa {
        Isa::Scalar => {
            for (r, x) in xs.iter().enumerate() {
                for (j, wr) in w.chunks_exact(row_bytes).enumerate() {
                    out[r * rows + j] = scalar::vec_dot(format, wr, x);
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            assert!(Isa::available().contains(&isa), "AVX2 is not available");
            // SAFETY: features checked above; lengths checked above.
            unsafe { x86::panel_avx2(format, w, row_bytes, xs, out.as_mut_ptr(), rows) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => {
            assert!(
                Isa::available().contains(&isa),
                "AVX-512 VNNI is not available"
            );
            // SAFETY: features checked above; lengths checked above.
            unsafe { x86::panel_vnni(format, w, row_bytes, xs, out.as_mut_ptr(), rows) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => aarch64::panel(format, w, row_bytes, xs, out),
        #[allow(unreachable_patterns)]
        other => panic!("ISA {} is not available on this target", other.name()),
    }
}

thread_local! {
    /// Quantized activations, reused across calls on the calling thread.
    static SCRATCH: RefCell<QAct> = RefCell::new(QAct::new());
}

/// Raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements of one live buffer (see `matmul_q`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the `Sync` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// An error unless `isa` runs on this CPU.
pub(crate) fn check_isa(isa: Isa) -> Result<()> {
    if Isa::available().contains(&isa) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "ISA {} is not available here",
            isa.name()
        )))
    }
}

/// An error unless `w` holds `m` rows of `k` values of `format` and `x`
/// holds `n` rows of `k`.
pub(crate) fn check_shapes(
    what: &str,
    format: WeightFormat,
    w: &[u8],
    x: &[f32],
    (n, k, m): (usize, usize, usize),
) -> Result<()> {
    if w.len() != m * format.bytes_for(k)? || x.len() != n * k {
        return Err(Error::Invalid(format!(
            "{what}: {} weight bytes for [{m}, {k}] {} and {} inputs for [{n}, {k}]",
            w.len(),
            format.name(),
            x.len()
        )));
    }
    Ok(())
}

/// Quantizes `x[n, k]` (`kind`, with the wide VNNI form when `wide`) into
/// this thread's scratch buffer and calls `f` with its rows. A nested call
/// on the same thread (rayon work stealing) gets a buffer of its own.
pub(crate) fn with_act_rows<T>(
    isa: Isa,
    kind: ActKind,
    wide: bool,
    x: &[f32],
    n: usize,
    k: usize,
    f: impl FnOnce(&[ActRow]) -> T,
) -> T {
    let run = |act: &mut QAct| {
        act.quantize(kind, x, n, k, quantizer(isa), wide);
        let xs: Vec<ActRow> = (0..n).map(|i| act.row(i)).collect();
        f(&xs)
    };
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut act) => run(&mut act),
        Err(_) => run(&mut QAct::new()),
    })
}

/// Activation rows per microkernel in the tiled (prefill) path of the
/// plain kernels (the interleaved ones: [`il::GROUP`]).
const GROUP: usize = 4;
/// Activation rows up to which the row-split (decode) path is used.
const DECODE_ROWS: usize = 4;

/// `y[n, m] = x[n, k] · wᵀ` for `w` holding `m` rows of `k` values in
/// `format` (GGML blocks), with the detected ISA.
pub fn matmul_q(
    format: WeightFormat,
    w: &[u8],
    x: &[f32],
    n: usize,
    k: usize,
    m: usize,
) -> Result<Vec<f32>> {
    matmul_q_with(Isa::detect(), format, w, x, n, k, m)
}

/// [`matmul_q`] with a chosen ISA (tests and benchmarks).
pub fn matmul_q_with(
    isa: Isa,
    format: WeightFormat,
    w: &[u8],
    x: &[f32],
    n: usize,
    k: usize,
    m: usize,
) -> Result<Vec<f32>> {
    if !supports(format) {
        return Err(Error::Invalid(format!(
            "{} is not a GGML block format",
            format.name()
        )));
    }
    check_isa(isa)?;
    let row_bytes = format.bytes_for(k)?;
    check_shapes("quantized matmul", format, w, x, (n, k, m))?;
    let mut y = mm_core::host_pool::zeroed(n * m);
    if n == 0 || m == 0 {
        return Ok(y);
    }
    with_act_rows(
        isa,
        act_kind(format),
        isa == Isa::Avx512Vnni,
        x,
        n,
        k,
        |xs| {
            compute_tiled(row_bytes, GROUP, n, m, &mut y, |j0, j1, i0, out| {
                panel(
                    isa,
                    format,
                    &w[j0 * row_bytes..j1 * row_bytes],
                    row_bytes,
                    &xs[i0..i0 + out.len() / (j1 - j0)],
                    out,
                )
            })
        },
    );
    Ok(y)
}

/// The threading shared by every quantized matmul (GGML and metal-marlin
/// formats): fills `y[n, m]` by calling `kern(j0, j1, i0, out)`, which must
/// write `out[r·(j1−j0) + (j − j0)] = w[j] · x[i0 + r]` for the weight rows
/// `j0..j1` and the `out.len() / (j1 − j0)` (1 to `group`) activation rows from
/// `i0`. `row_bytes` (bytes streamed per weight row) sizes the tiles.
///
/// Every range starts at a multiple of 16 weight rows (the interleaved
/// kernels' groups, `il.rs`).
///
/// Decode (`n ≤ 4`): equal contiguous ranges of weight rows, each swept in
/// chunks of 64 rows against all `n` activation rows. Prefill: tiles of
/// (weight-row block that fits L1) × (groups of `group` activation rows).
pub(crate) fn compute_tiled<K>(
    row_bytes: usize,
    group: usize,
    n: usize,
    m: usize,
    y: &mut [f32],
    kern: K,
) where
    K: Fn(usize, usize, usize, &mut [f32]) + Sync,
{
    let threads = crate::pool::threads();
    if n <= DECODE_ROWS {
        // Decode: equal contiguous row ranges, few tasks. Large matrices get
        // a few tasks per thread so a thread slowed by a neighbour process
        // does not hold up the call.
        let big = m * row_bytes >= 4 << 20;
        let tasks = if m * row_bytes < 64 << 10 {
            1
        } else if big {
            4 * threads
        } else {
            threads
        };
        let per = m.div_ceil(tasks).next_multiple_of(16).min(m);
        let yp = OutPtr(y.as_mut_ptr());
        let task = |t: usize| {
            let j0 = t * per;
            let j1 = (j0 + per).min(m);
            if j0 >= j1 {
                return;
            }
            let rows = j1 - j0;
            let mut local = [0.0f32; 4 * 64];
            for c0 in (0..rows).step_by(64) {
                let c1 = (c0 + 64).min(rows);
                let cr = c1 - c0;
                let out = &mut local[..cr * n];
                kern(j0 + c0, j0 + c1, 0, out);
                for r in 0..n {
                    // SAFETY: rows j0+c0..j0+c1 of column block belong to
                    // this task only; y has n·m elements.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            out.as_ptr().add(r * cr),
                            yp.get().add(r * m + j0 + c0),
                            cr,
                        )
                    };
                }
            }
        };
        let ntasks = m.div_ceil(per);
        crate::pool::for_each(ntasks, task);
        return;
    }
    // Prefill: tiles of (weight-row block that fits L1) × (activation-row
    // groups); within a tile, each group of 4 rows sweeps the weight block.
    let jb = (16 << 10) / row_bytes.max(1);
    let jb = jb.clamp(16, 256) / 16 * 16;
    let row_blocks = m.div_ceil(jb);
    let groups = n.div_ceil(group);
    let want = 4 * threads;
    let group_chunks = want.div_ceil(row_blocks).clamp(1, groups);
    let per_chunk = groups.div_ceil(group_chunks);
    let group_chunks = groups.div_ceil(per_chunk);
    let yp = OutPtr(y.as_mut_ptr());
    crate::pool::for_each(row_blocks * group_chunks, |t| {
        let (rb, gc) = (t % row_blocks, t / row_blocks);
        let j0 = rb * jb;
        let j1 = (j0 + jb).min(m);
        let rows = j1 - j0;
        let mut local = vec![0.0f32; group * rows];
        let g1 = ((gc + 1) * per_chunk).min(groups);
        for g in gc * per_chunk..g1 {
            let i0 = g * group;
            let i1 = (i0 + group).min(n);
            let nr = i1 - i0;
            let out = &mut local[..nr * rows];
            kern(j0, j1, i0, out);
            for r in 0..nr {
                // SAFETY: elements (i0+r, j0..j1) belong to this task only.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        out.as_ptr().add(r * rows),
                        yp.get().add((i0 + r) * m + j0),
                        rows,
                    )
                };
            }
        }
    });
}

#[cfg(test)]
pub(crate) mod tests;
