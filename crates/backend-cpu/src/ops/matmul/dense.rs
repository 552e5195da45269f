//! Dense weights (F32, F16, BF16) multiplied on their stored bytes:
//! `y[n, m] = x[n, k] · w[m, k]ᵀ`, f32 activations, f32 sums.
//!
//! Layout: `w` is the weight as stored, row-major `[m, k]` of little-endian
//! 4- or 2-byte values at any alignment (every load is unaligned); `x` and
//! `y` are row-major f32.
//!
//! Why: decode streams every weight once per token, so its speed is the
//! bytes read per weight. F16/BF16 are widened in registers — F16C
//! `vcvtph2ps` (AVX2 and AVX-512), NEON `fcvtl`, BF16 by a 16-bit shift
//! (it is the top half of an f32) — exactly, so no f32 copy of the weight
//! is kept and decode reads 2 bytes per weight.
//!
//! Strategy (threading and tiles from [`compute_tiled`], shared with the
//! quantized kernels):
//! * decode (≤ [`DIRECT_ROWS`] activation rows): each task streams a
//!   contiguous range of weight rows through [`row`], one row at a time
//!   (one contiguous stream, software-prefetched) against all N activation
//!   rows, so each loaded weight vector is widened once and feeds N FMAs;
//! * prefill: each task widens its block of weight rows (16 on SmolLM2's
//!   shapes) into a thread-local f32 panel once and sweeps its activation
//!   rows, in groups of [`GROUP`], over it with [`tile`]: 6 × 2 register
//!   tiles (6 × 4 with 32 registers) over column blocks of at most [`KC`],
//!   so a tile's rows stay in L1. F32 weights skip the panel.
//!
//! The kernels are written once, generic over [`Lanes`] (one SIMD register
//! of f32 and the widening loads into it: `x86.rs`, `aarch64.rs`, or
//! [`Portable`] arrays), instantiated inside each ISA's `#[target_feature]`
//! entry point. Each output is a sum of f32 lane sums: only the summation
//! order differs from the scalar twin [`matmul_ref`] (f64 sums).

#[cfg(target_arch = "aarch64")]
pub(crate) mod aarch64;
mod lanes;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use mm_core::{Error, Result, WeightFormat};

use crate::ops::qmatmul::{check_shapes, compute_tiled, Isa};

pub(crate) use lanes::{Bf16, Elem, Lanes, Portable, F16, F32};

/// Activation rows up to which a tile reads the stored weight directly;
/// more rows widen the weight block into an f32 panel first.
const DIRECT_ROWS: usize = 4;
/// Longest column block of the prefill tiles: 6 activation rows and 2
/// weight rows of 768 f32 are 24 KiB, inside a 32 KiB L1.
const KC: usize = 768;
/// How far ahead of its loads the decode kernel prefetches the weight.
const AHEAD: usize = 2048;
/// Activation rows swept over one widened panel (a task may take several;
/// a multiple of the 6-row register tile).
const GROUP: usize = 60;

/// Instruction set of the dense kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Simd {
    /// Portable code ([`Portable`]): the compiler's auto-vectorization.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C, 8 lanes.
    Avx2,
    /// x86-64 AVX-512F, 16 lanes.
    Avx512,
    /// aarch64 NEON, 4 lanes.
    Neon,
}

impl Simd {
    pub fn name(self) -> &'static str {
        match self {
            Simd::Scalar => "scalar",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
            Simd::Neon => "neon",
        }
    }

    /// Every level this CPU runs, best last (detected once).
    pub fn available() -> &'static [Simd] {
        static AVAIL: OnceLock<Vec<Simd>> = OnceLock::new();
        AVAIL.get_or_init(|| {
            let mut v = vec![Simd::Scalar];
            if Isa::available().contains(&Isa::Avx2) {
                v.push(Simd::Avx2);
                #[cfg(target_arch = "x86_64")]
                if is_x86_feature_detected!("avx512f") {
                    v.push(Simd::Avx512);
                }
            }
            if Isa::available().contains(&Isa::Neon) {
                v.push(Simd::Neon);
            }
            v
        })
    }

    /// The level of [`Isa::detect`]: AVX-512F wherever present (no VNNI
    /// needed), unless `MM_QMATMUL_ISA` asks for a lower ISA.
    pub fn detect() -> Simd {
        let best = *Simd::available()
            .last()
            .expect("scalar is always available");
        match Isa::detect() {
            Isa::Scalar => Simd::Scalar,
            Isa::Avx2 if std::env::var_os("MM_QMATMUL_ISA").is_some() => Simd::Avx2,
            _ => best,
        }
    }
}

/// Bytes per stored value of a dense format; an error for other formats.
pub(crate) fn elem_bytes(format: WeightFormat) -> Result<usize> {
    match format {
        WeightFormat::F32 => Ok(4),
        WeightFormat::F16 | WeightFormat::BF16 => Ok(2),
        f => Err(Error::Invalid(format!(
            "dense matmul: {} is not a dense format (F32, F16, BF16)",
            f.name()
        ))),
    }
}

/// `y[n, m] = x[n, k] · wᵀ` for `w` holding `m` rows of `k` values stored
/// in `format` (F32, F16 or BF16), with the detected level.
pub fn matmul(
    format: WeightFormat,
    w: &[u8],
    x: &[f32],
    n: usize,
    k: usize,
    m: usize,
) -> Result<Vec<f32>> {
    matmul_with(Simd::detect(), format, w, x, n, k, m)
}

/// [`matmul`] with a chosen level (tests and benchmarks).
pub fn matmul_with(
    simd: Simd,
    format: WeightFormat,
    w: &[u8],
    x: &[f32],
    n: usize,
    k: usize,
    m: usize,
) -> Result<Vec<f32>> {
    tiled(simd, format, w, x, (n, k, m), None)
}

/// `y[n, m] = x[n, k] · wᵀ` for a weight of any stored format, given by a
/// function that writes its rows `j0..j1` as f32 (`fill(j0, j1, panel)`,
/// row-major, `k` values a row): the prefill path of quantized weights
/// with f32 activations. Each task dequantizes its block of weight rows
/// once into its thread's panel and sweeps its activation rows over it
/// with the same register tiles as F16/BF16 prefill, so the dequantization
/// is paid once per weight and task, not per activation row.
pub fn matmul_panels_with<F>(
    simd: Simd,
    x: &[f32],
    n: usize,
    k: usize,
    m: usize,
    fill: F,
) -> Result<Vec<f32>>
where
    F: Fn(usize, usize, &mut [f32]) + Sync,
{
    check_simd(simd)?;
    if x.len() != n * k {
        return Err(Error::Invalid(format!(
            "panel matmul: {} inputs for [{n}, {k}]",
            x.len()
        )));
    }
    let mut y = mm_core::host_pool::zeroed(n * m);
    if n == 0 || m == 0 || k == 0 {
        return Ok(y);
    }
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    compute_tiled(4 * k, GROUP, n, m, &mut y, |j0, j1, i0, out| {
        let rows = j1 - j0;
        let x = &x[i0 * k..][..out.len() / rows * k];
        let panel = with_panel((call, j0), rows * k, |p| fill(j0, j1, p));
        let panel = bytemuck::cast_slice(&panel.values);
        dot(simd, WeightFormat::F32, panel, x, k, out, rows, Mode::Tiles);
    });
    Ok(y)
}

/// `dst[i] = src[i]` widened to f32 (`src` holds `dst.len()` values stored
/// in `format`), with a chosen level.
pub fn widen_with(simd: Simd, format: WeightFormat, src: &[u8], dst: &mut [f32]) -> Result<()> {
    check_simd(simd)?;
    if src.len() != dst.len() * elem_bytes(format)? {
        return Err(Error::Invalid(format!(
            "widen: {} bytes of {} for {} values",
            src.len(),
            format.name(),
            dst.len(),
        )));
    }
    to_f32(simd, format, src, dst);
    Ok(())
}

fn check_simd(simd: Simd) -> Result<()> {
    if Simd::available().contains(&simd) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "dense matmul: {} is not available here",
            simd.name()
        )))
    }
}

/// `dst = src` widened (see [`Job::Widen`]).
fn to_f32(simd: Simd, format: WeightFormat, src: &[u8], dst: &mut [f32]) {
    run(simd, Job::Widen { format, src, dst });
}

/// `out[i·os + j] = w[j] · x[i]` (see [`Job::Dot`]).
#[allow(clippy::too_many_arguments)]
fn dot(
    simd: Simd,
    format: WeightFormat,
    w: &[u8],
    x: &[f32],
    k: usize,
    out: &mut [f32],
    os: usize,
    mode: Mode,
) {
    run(
        simd,
        Job::Dot {
            format,
            w,
            x,
            k,
            out,
            os,
            mode,
        },
    );
}

/// How a kernel call runs its activation rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The fastest kernel for the row count: 1–4 rows the decode kernel
    /// ([`row`], more accumulators for fewer rows), more rows the tiles.
    Auto,
    /// Every row through the register tiles: an output's arithmetic does
    /// not depend on the row count (prompt rows).
    Tiles,
    /// Every row through the decode kernel with two accumulators per row,
    /// 4 rows at a time: likewise independent of the row count (generated
    /// rows, which read the weight as stored).
    Rows,
}

/// `y[n, m] = x[n, k] · wᵀ` (`w` stored in `format`) where every row gets
/// the arithmetic of `kind`, whatever `n` ([`Mode`]): prompt rows through
/// the prefill tiles (on a widened panel for F16/BF16), generated rows
/// through the decode kernel. Batch invariance of dense weights.
#[allow(clippy::too_many_arguments)]
pub fn matmul_kind_with(
    simd: Simd,
    format: WeightFormat,
    w: &[u8],
    x: &[f32],
    n: usize,
    k: usize,
    m: usize,
    kind: mm_core::RowKind,
) -> Result<Vec<f32>> {
    tiled(simd, format, w, x, (n, k, m), Some(kind))
}

/// The threading of every dense matmul: tasks of (weight rows × activation
/// rows) from [`compute_tiled`]; per task the kernel for `kind` ([`Mode`]),
/// or without one the fastest for its row count (F16/BF16 prefill widened
/// once per task into the thread's panel).
fn tiled(
    simd: Simd,
    format: WeightFormat,
    w: &[u8],
    x: &[f32],
    (n, k, m): (usize, usize, usize),
    kind: Option<mm_core::RowKind>,
) -> Result<Vec<f32>> {
    let row_bytes = k * elem_bytes(format)?;
    check_simd(simd)?;
    check_shapes("dense matmul", format, w, x, (n, k, m))?;
    let mut y = mm_core::host_pool::zeroed(n * m);
    if n == 0 || m == 0 || k == 0 {
        return Ok(y);
    }
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    compute_tiled(row_bytes, GROUP, n, m, &mut y, |j0, j1, i0, out| {
        let rows = j1 - j0;
        let x = &x[i0 * k..][..out.len() / rows * k];
        let w = &w[j0 * row_bytes..j1 * row_bytes];
        let (direct, mode) = match kind {
            Some(mm_core::RowKind::Generated) => (true, Mode::Rows),
            Some(mm_core::RowKind::Prompt) => (format == WeightFormat::F32, Mode::Tiles),
            None => (
                x.len() / k <= DIRECT_ROWS || format == WeightFormat::F32,
                Mode::Auto,
            ),
        };
        if direct {
            dot(simd, format, w, x, k, out, rows, mode);
        } else {
            // A task's groups share its weight block: widen it once.
            let panel = with_panel((call, j0), rows * k, |p| to_f32(simd, format, w, p));
            let panel = bytemuck::cast_slice(&panel.values);
            dot(simd, WeightFormat::F32, panel, x, k, out, rows, mode);
        }
    });
    Ok(y)
}

/// One kernel call (the shapes are implied by the slices).
pub(super) enum Job<'a> {
    /// `out[i·os + j] = w[j] · x[i]` for every weight row `j` of `w` (rows
    /// of `k` values stored in `format`) and activation row `i` of `x`.
    Dot {
        format: WeightFormat,
        w: &'a [u8],
        x: &'a [f32],
        k: usize,
        out: &'a mut [f32],
        os: usize,
        /// How the activation rows run.
        mode: Mode,
    },
    /// `dst = src` widened to f32.
    Widen {
        format: WeightFormat,
        src: &'a [u8],
        dst: &'a mut [f32],
    },
}

/// Runs `job` on `simd`, which the caller checked is available.
fn run(simd: Simd, job: Job) {
    if let Job::Dot {
        w,
        x,
        k,
        ref out,
        os,
        format,
        ..
    } = job
    {
        let (rows, n) = (w.len() / (k * format.block().1), x.len() / k);
        assert!(rows * k * format.block().1 == w.len() && n * k == x.len());
        assert!(n == 0 || rows == 0 || (n - 1) * os + rows <= out.len());
        assert!(rows <= os || n <= 1, "output rows overlap");
    }
    match simd {
        // SAFETY (every arm): the level is available (checked by the
        // callers) and the slices hold the shapes (asserted above).
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { x86::run_avx2(job) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { x86::run_avx512(job) },
        #[cfg(target_arch = "aarch64")]
        Simd::Neon => aarch64::run_neon(job),
        _ => unsafe { run_generic::<Portable>(job) },
    }
}

/// Numbers the matmul calls, to tag widened panels.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// A widened weight block and its tag (call, first row).
struct Panel {
    tag: (u64, usize),
    values: Vec<f32>,
}

thread_local! {
    /// This thread's widened weight panel (prefill), reused across calls.
    static PANEL: RefCell<Option<Rc<Panel>>> = const { RefCell::new(None) };
}

/// This thread's panel of `len` floats tagged `tag`: filled by `fill` unless
/// it already holds that tag (the same weight block of the same call).
fn with_panel(tag: (u64, usize), len: usize, fill: impl FnOnce(&mut [f32])) -> Rc<Panel> {
    PANEL.with(|p| {
        let mut p = p.borrow_mut();
        if let Some(panel) = p.as_ref().filter(|q| q.tag == tag && q.values.len() == len) {
            return panel.clone();
        }
        // Reuse the allocation when nothing else holds it.
        let mut panel = p
            .take()
            .and_then(|q| Rc::try_unwrap(q).ok())
            .unwrap_or(Panel {
                tag,
                values: Vec::new(),
            });
        panel.tag = tag;
        panel.values.resize(len, 0.0);
        fill(&mut panel.values);
        let panel = Rc::new(panel);
        *p = Some(panel.clone());
        panel
    })
}

/// `out[i·os] = Σ_t w[t] · x[i, t]` for one weight row at `w` (`k` values
/// of `E`) and `N` activation rows at `x`: the decode kernel. Weight rows
/// follow each other, so a sweep of rows reads one contiguous stream,
/// prefetched [`AHEAD`] bytes ahead (one stream keeps the hardware
/// prefetchers and the memory system busiest: 20–40% faster than 4 rows
/// at once on Zen 3); `N·U` independent accumulators.
#[inline(always)]
unsafe fn row<S: Lanes, E: Elem, const N: usize, const U: usize>(
    w: *const u8,
    x: *const f32,
    k: usize,
    out: *mut f32,
    os: usize,
) {
    let step = U * S::L;
    let mut acc = [[S::zero(); U]; N];
    let mut t = 0;
    while t + step <= k {
        for b in (0..step * E::BYTES).step_by(64) {
            S::prefetch(w.wrapping_add(t * E::BYTES + b + AHEAD));
        }
        for u in 0..U {
            let o = t + u * S::L;
            let v = E::load::<S>(w.add(o * E::BYTES));
            for (i, a) in acc.iter_mut().enumerate() {
                a[u] = S::fma(v, S::f32s(x.add(i * k + o).cast()), a[u]);
            }
        }
        t += step;
    }
    while t + S::L <= k {
        let v = E::load::<S>(w.add(t * E::BYTES));
        for (i, a) in acc.iter_mut().enumerate() {
            a[0] = S::fma(v, S::f32s(x.add(i * k + t).cast()), a[0]);
        }
        t += S::L;
    }
    for (i, a) in acc.iter().enumerate() {
        let v = a[1..].iter().fold(a[0], |v, &a| S::add(v, a));
        let mut s = S::sum(v);
        for u in t..k {
            s += E::one(w.add(u * E::BYTES)) * *x.add(i * k + u);
        }
        *out.add(i * os) = s;
    }
}

/// [`row`] over `rows` consecutive weight rows.
#[inline(always)]
unsafe fn rows<S: Lanes, E: Elem, const N: usize, const U: usize>(
    w: *const u8,
    rows: usize,
    x: *const f32,
    k: usize,
    out: *mut f32,
    os: usize,
) {
    for j in 0..rows {
        row::<S, E, N, U>(w.add(j * k * E::BYTES), x, k, out.add(j), os);
    }
}

/// Columns `k0..k1` of rows of `k` values; `add`: add the partial sums to
/// the outputs instead of storing them.
#[derive(Clone, Copy)]
struct Cols {
    k: usize,
    k0: usize,
    k1: usize,
    add: bool,
}

/// `out[i·os + j] (+)= Σ_{t ∈ c} w[j, t] · x[i, t]` for `R` weight rows at
/// `w` (rows of `c.k` values of `E`) and `N` activation rows at `x`: the
/// prefill kernel, on a panel in L2. Each weight vector feeds `N` FMAs and
/// each activation vector `R`, `R·N` independent accumulators.
#[inline(always)]
unsafe fn tile<S: Lanes, E: Elem, const R: usize, const N: usize>(
    w: *const u8,
    x: *const f32,
    c: Cols,
    out: *mut f32,
    os: usize,
) {
    let rb = c.k * E::BYTES;
    let kv = c.k1 - (c.k1 - c.k0) % S::L;
    let mut acc = [[S::zero(); R]; N];
    let mut t = c.k0;
    while t < kv {
        let mut wv = [S::zero(); R];
        for (j, v) in wv.iter_mut().enumerate() {
            *v = E::load::<S>(w.add(j * rb + t * E::BYTES));
        }
        for (i, a) in acc.iter_mut().enumerate() {
            let xv = S::f32s(x.add(i * c.k + t).cast());
            for (a, &v) in a.iter_mut().zip(&wv) {
                *a = S::fma(v, xv, *a);
            }
        }
        t += S::L;
    }
    let mut sums = [[0.0f32; R]; N];
    for (s, a) in sums
        .as_flattened_mut()
        .chunks_mut(4)
        .zip(acc.as_flattened().chunks(4))
    {
        if let ([s0, s1, s2, s3], &[a0, a1, a2, a3]) = (&mut *s, a) {
            [*s0, *s1, *s2, *s3] = S::sum4(a0, a1, a2, a3);
        } else {
            s.iter_mut().zip(a).for_each(|(s, &a)| *s = S::sum(a));
        }
    }
    for (i, sums) in sums.iter().enumerate() {
        for (j, &s) in sums.iter().enumerate() {
            let mut s = s;
            for u in kv..c.k1 {
                s += E::one(w.add(j * rb + u * E::BYTES)) * *x.add(i * c.k + u);
            }
            let o = out.add(i * os + j);
            *o = if c.add { *o + s } else { s };
        }
    }
}

/// [`tile`] over `rows` weight rows, `R` at a time, then one at a time.
#[inline(always)]
unsafe fn sweep<S: Lanes, E: Elem, const R: usize, const N: usize>(
    w: *const u8,
    rows: usize,
    x: *const f32,
    c: Cols,
    out: *mut f32,
    os: usize,
) {
    let rb = c.k * E::BYTES;
    let mut j = 0;
    while j + R <= rows {
        tile::<S, E, R, N>(w.add(j * rb), x, c, out.add(j), os);
        j += R;
    }
    while j < rows {
        tile::<S, E, 1, N>(w.add(j * rb), x, c, out.add(j), os);
        j += 1;
    }
}

/// Every weight row × activation row. Decode (1 to 4 activation rows):
/// [`row`] with 4, 2, 1, 1 registers of `k` per activation row. More rows:
/// 6 at a time in 6 × 2 [`tile`]s (12 accumulators, 8 loads per 12 FMAs:
/// FMA-bound with AVX2's 16 registers; 6 × 4 with 32 registers), over
/// column blocks of at most [`KC`] so that 6 activation rows and 2 weight
/// rows stay in L1; then the rest. [`Mode::Tiles`] runs the rest through
/// tiles of the same column blocks too, [`Mode::Rows`] every row through
/// [`row`] with two registers, so that each output's arithmetic does not
/// depend on the row count (batch invariance).
#[inline(always)]
unsafe fn dot_rows<S: Lanes, E: Elem>(
    w: &[u8],
    x: &[f32],
    k: usize,
    out: &mut [f32],
    os: usize,
    mode: Mode,
) {
    if mode == Mode::Rows {
        let (nw, n) = (w.len() / (k * E::BYTES), x.len() / k);
        let (w, x, o) = (w.as_ptr(), x.as_ptr(), out.as_mut_ptr());
        for i in (0..n).step_by(4) {
            let (x, o) = (x.add(i * k), o.add(i * os));
            match n - i {
                1 => rows::<S, E, 1, 2>(w, nw, x, k, o, os),
                2 => rows::<S, E, 2, 2>(w, nw, x, k, o, os),
                3 => rows::<S, E, 3, 2>(w, nw, x, k, o, os),
                _ => rows::<S, E, 4, 2>(w, nw, x, k, o, os),
            }
        }
        return;
    }
    let uniform = mode == Mode::Tiles;
    let (nw, n) = (w.len() / (k * E::BYTES), x.len() / k);
    let (w, x, o) = (w.as_ptr(), x.as_ptr(), out.as_mut_ptr());
    let n6 = n - n % 6;
    let kc = k.div_ceil(k.div_ceil(KC)).next_multiple_of(S::L);
    for k0 in (0..k).step_by(kc) {
        let c = Cols {
            k,
            k0,
            k1: (k0 + kc).min(k),
            add: k0 > 0,
        };
        for i in (0..n6).step_by(6) {
            let (x, o) = (x.add(i * k), o.add(i * os));
            if S::WIDE {
                sweep::<S, E, 4, 6>(w, nw, x, c, o, os);
            } else {
                sweep::<S, E, 2, 6>(w, nw, x, c, o, os);
            }
        }
        if uniform {
            let (x, o) = (x.add(n6 * k), o.add(n6 * os));
            match n - n6 {
                5 => sweep::<S, E, 2, 5>(w, nw, x, c, o, os),
                4 => sweep::<S, E, 2, 4>(w, nw, x, c, o, os),
                3 => sweep::<S, E, 2, 3>(w, nw, x, c, o, os),
                2 => sweep::<S, E, 2, 2>(w, nw, x, c, o, os),
                1 => sweep::<S, E, 4, 1>(w, nw, x, c, o, os),
                _ => {}
            }
        }
    }
    if uniform {
        return;
    }
    let (x, o) = (x.add(n6 * k), o.add(n6 * os));
    let c = Cols {
        k,
        k0: 0,
        k1: k,
        add: false,
    };
    match n - n6 {
        5 => sweep::<S, E, 2, 5>(w, nw, x, c, o, os),
        4 => rows::<S, E, 4, 1>(w, nw, x, k, o, os),
        3 => rows::<S, E, 3, 1>(w, nw, x, k, o, os),
        2 => rows::<S, E, 2, 2>(w, nw, x, k, o, os),
        1 => rows::<S, E, 1, 4>(w, nw, x, k, o, os),
        _ => {}
    }
}

/// `dst = src` widened, a register at a time.
#[inline(always)]
unsafe fn widen<S: Lanes, E: Elem>(src: &[u8], dst: &mut [f32]) {
    let (s, d, len) = (src.as_ptr(), dst.as_mut_ptr(), dst.len());
    let lv = len - len % S::L;
    let mut t = 0;
    while t < lv {
        S::store(d.add(t), E::load::<S>(s.add(t * E::BYTES)));
        t += S::L;
    }
    for u in lv..len {
        *d.add(u) = E::one(s.add(u * E::BYTES));
    }
}

/// The kernels on `S`, instantiated by each ISA's entry point.
///
/// # Safety
/// `S`'s instructions must be available; the slices must hold the shapes
/// [`run`] asserts.
#[inline(always)]
pub(super) unsafe fn run_generic<S: Lanes>(job: Job) {
    use WeightFormat as F;
    match job {
        Job::Dot {
            format: F::F16,
            w,
            x,
            k,
            out,
            os,
            mode,
        } => dot_rows::<S, F16>(w, x, k, out, os, mode),
        Job::Dot {
            format: F::BF16,
            w,
            x,
            k,
            out,
            os,
            mode,
        } => dot_rows::<S, Bf16>(w, x, k, out, os, mode),
        Job::Dot {
            w,
            x,
            k,
            out,
            os,
            mode,
            ..
        } => dot_rows::<S, F32>(w, x, k, out, os, mode),
        Job::Widen {
            format: F::F16,
            src,
            dst,
        } => widen::<S, F16>(src, dst),
        Job::Widen {
            format: F::BF16,
            src,
            dst,
        } => widen::<S, Bf16>(src, dst),
        Job::Widen { src, dst, .. } => widen::<S, F32>(src, dst),
    }
}

/// The value of element `i` of `w` stored in `format` (F32, F16, BF16).
pub fn value_ref(format: WeightFormat, w: &[u8], i: usize) -> f32 {
    match format {
        WeightFormat::F32 => f32::from_le_bytes(w[4 * i..4 * i + 4].try_into().expect("4 bytes")),
        WeightFormat::F16 => half::f16::from_le_bytes([w[2 * i], w[2 * i + 1]]).to_f32(),
        WeightFormat::BF16 => half::bf16::from_le_bytes([w[2 * i], w[2 * i + 1]]).to_f32(),
        f => panic!("{} is not a dense format", f.name()),
    }
}

/// Scalar twin of [`matmul`]: f64 sums of the stored values.
pub fn matmul_ref(
    format: WeightFormat,
    w: &[u8],
    x: &[f32],
    n: usize,
    k: usize,
    m: usize,
) -> Vec<f32> {
    let wd: Vec<f32> = (0..m * k).map(|i| value_ref(format, w, i)).collect();
    super::matmul_ref(x, &wd, None, n, k, m)
}
