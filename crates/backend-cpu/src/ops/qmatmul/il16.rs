//! Prompt rows over the row-interleaved form ([`il`](super::il)) with
//! 16-bit activations: the prefill path of Q4_0, Q4_1, Q8_0 and
//! metal-marlin int4/int8 (sym, asym), fp4 and mxfp4 on x86.
//!
//! **Why.** Prefill is compute-bound. On AVX2 an f32 FMA does 8
//! multiply-adds; `vpmaddwd` does 16 (i16 × i16, pairs summed into i32).
//! One Zen 3 core sustains 57–79 G multiply-adds/s of `vpmaddwd` +
//! `vpaddd` against 38–51 G/s of FMA, 1.4–1.6× (`cargo run --release -p
//! mm-backend-cpu --example isa_peak`). On SmolLM2's linears this path
//! runs 1.4× the dequantized f32 panels it replaces (docs/BENCHMARKS.md),
//! while the activations keep about
//! 16 significant bits: the precision of decode's two 8-bit passes
//! ([`ActPrecision::Int8Residual`](crate::ops::matmul::ActPrecision)), in
//! one pass.
//!
//! **Activations** ([`Act16`]): each row in 32-blocks; per block
//! `d = amax/32767`, `q = round_ties_even(x · 32767/amax)` as i16 and
//! `s = d · Σq` (for the mins of Q4_1).
//!
//! **Panel** ([`Panel16`]): a task decodes its 16 weight rows (one
//! interleaved row group) once into signed codes `c = L(u) − z` (|c| ≤ 255,
//! see `il.rs` for `L` and `z`), stored as i16 in 256-bit vectors: for half
//! `h` (rows `8h..8h+8`), 32-block `b` and pair `p` (0..16), the vector at
//! `((h·nb + b)·16 + p)·16` holds, for row `j` (0..8), the codes of columns
//! `32b + 2p` and `32b + 2p + 1`. Per (half, block) the 8 scales `d` and
//! (Q4_1) the 8 mins `m` follow as f32.
//!
//! **Dot product**: per 32-block the exact integer `Σ c·q` (at most
//! 32·255·32767 < 2³¹), then `acc = fma(f32(Σ), d·d_x, acc)` and, for
//! Q4_1, `acc = fma(m, s, acc)`. A `split` panel (dense weights' wider
//! codes, `dense16.rs`) takes the sum as two of 16 products, each
//! converted and added by its own FMA. The scalar twin [`tile_ref`] performs the
//! same f32 operations in the same order, so the AVX2 kernel
//! (`x86_il16.rs`) matches it bit for bit, and every activation row's
//! result depends on that row alone (batch invariance).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use mm_core::Result;

use super::il::{group_params, IlPrepared, LANES};
use super::{compute_tiled, Isa};

/// Activation rows per tiled task: a multiple of the kernel's [`TILE`].
pub const GROUP: usize = 60;
/// Activation rows of one register tile (12 i32 accumulators: 6 rows × 2
/// halves of 8 weight rows).
pub const TILE: usize = 6;
/// Largest activation code over the interleaved formats (16-bit,
/// symmetric; their weight codes have |c| ≤ 255).
pub const QMAX: f32 = 32767.0;

/// Activations quantized to 16 bits in 32-blocks (see the module docs).
#[derive(Default)]
pub struct Act16 {
    pub n: usize,
    pub k: usize,
    /// Codes, `n × k`.
    pub q: Vec<i16>,
    /// Per-block scales, `n × k/32`.
    pub d: Vec<f32>,
    /// Per-block `d · Σq`, `n × k/32`.
    pub s: Vec<f32>,
}

impl Act16 {
    /// Quantizes `x[n, k]` (`k` a multiple of 32) to codes up to ±`qmax`,
    /// rows in parallel, with `isa`'s code (the same arithmetic at every
    /// level).
    pub fn quantize(&mut self, isa: Isa, x: &[f32], n: usize, k: usize, qmax: f32) {
        assert!(k % 32 == 0 && x.len() == n * k, "bad activation shape");
        let nb = k / 32;
        self.n = n;
        self.k = k;
        self.q.resize(n * k, 0);
        self.d.resize(n * nb, 0.0);
        self.s.resize(n * nb, 0.0);
        let rows = RowPtrs(
            self.q.as_mut_ptr(),
            self.d.as_mut_ptr(),
            self.s.as_mut_ptr(),
        );
        let chunk = (8192 / k).max(1);
        crate::pool::for_each(n.div_ceil(chunk), |c| {
            let rows = &rows;
            for i in c * chunk..((c + 1) * chunk).min(n) {
                // SAFETY: row `i` of each buffer belongs to this task alone;
                // the buffers hold `n` rows.
                let (q, d, s) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(rows.0.add(i * k), k),
                        std::slice::from_raw_parts_mut(rows.1.add(i * nb), nb),
                        std::slice::from_raw_parts_mut(rows.2.add(i * nb), nb),
                    )
                };
                quantize_row(isa, &x[i * k..(i + 1) * k], q, d, s, qmax);
            }
        });
    }
}

struct RowPtrs(*mut i16, *mut f32, *mut f32);
// SAFETY: tasks write disjoint rows of buffers that outlive the loop.
unsafe impl Sync for RowPtrs {}

/// One row of [`Act16`] with `isa` (AVX2 compiles the same code for 8
/// lanes; results are identical).
fn quantize_row(isa: Isa, x: &[f32], q: &mut [i16], d: &mut [f32], s: &mut [f32], qmax: f32) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => {
            // SAFETY: the caller checked that the ISA runs here.
            unsafe { super::x86_il16::quantize_row(x, q, d, s, qmax) }
        }
        _ => quantize_row_ref(x, q, d, s, qmax),
    }
}

/// The quantizer of [`Act16`] for one row (the scalar twin of
/// `x86_il16::quantize_row`). A block holding a NaN or an infinity gets
/// `d = s = NaN` (and codes 0), so the outputs it feeds are NaN, as they
/// would be in f32.
pub fn quantize_row_ref(x: &[f32], q: &mut [i16], d: &mut [f32], s: &mut [f32], qmax: f32) {
    for (b, (xb, qb)) in x.chunks_exact(32).zip(q.chunks_exact_mut(32)).enumerate() {
        if !xb.iter().all(|v| v.is_finite()) {
            qb.fill(0);
            (d[b], s[b]) = (f32::NAN, f32::NAN);
            continue;
        }
        let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let (db, id) = scales(amax, qmax);
        let mut sum = 0i32;
        for (o, v) in qb.iter_mut().zip(xb) {
            *o = (v * id).round_ties_even() as i16;
            sum += *o as i32;
        }
        d[b] = db;
        s[b] = db * sum as f32;
    }
}

/// `(amax/qmax, qmax/amax)`: the scale of a block whose codes reach
/// ±`qmax`, and its inverse. A block too small for the inverse to be
/// finite (amax under ~1e-34) or all zero gets `(0, 0)`: zero codes.
#[inline(always)]
pub(super) fn scales(amax: f32, qmax: f32) -> (f32, f32) {
    let inv = qmax / amax;
    if amax > 0.0 && inv.is_finite() {
        (amax / qmax, inv)
    } else {
        (0.0, 0.0)
    }
}

/// One row group of a weight decoded to 16-bit codes (module docs).
#[derive(Default)]
pub struct Panel16 {
    /// (call, row group) the panel holds.
    tag: (u64, usize),
    pub nb: usize,
    pub min: bool,
    /// Each 32-block's integer sum is taken as two sums of 16 products,
    /// each converted and scaled on its own (dense weights' wider codes,
    /// `dense16.rs`).
    pub split: bool,
    /// `2 · nb · 16` vectors of 16 codes.
    pub codes: Vec<i16>,
    /// `2 · nb · 8` scales.
    pub d: Vec<f32>,
    /// `2 · nb · 8` mins (Q4_1), else empty.
    pub m: Vec<f32>,
    /// Row-major codes of a dense group before their transpose into
    /// `codes` (`dense16.rs`'s AVX2 decode).
    pub(super) scratch: Vec<i16>,
}

impl Panel16 {
    /// Decodes row group `g` of `p` with `isa`'s code (the same panel at
    /// every level).
    pub fn fill(&mut self, isa: Isa, p: &IlPrepared, g: usize) {
        let nb = p.nb;
        self.nb = nb;
        self.min = p.min;
        self.split = false;
        self.codes.resize(2 * nb * 256, 0);
        self.d.resize(2 * nb * 8, 0.0);
        self.m.resize(if p.min { 2 * nb * 8 } else { 0 }, 0.0);
        for b in 0..nb {
            for lane in 0..LANES {
                let (h, j) = (lane / 8, lane % 8);
                let (d, m, _) = group_params(p, g, b / p.gb, lane);
                self.d[(h * nb + b) * 8 + j] = d;
                if p.min {
                    self.m[(h * nb + b) * 8 + j] = m;
                }
            }
        }
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512Vnni => {
                // SAFETY: the caller checked the ISA; `codes` is sized above.
                unsafe { super::x86_il16::fill_codes(p, g, &mut self.codes) }
            }
            _ => fill_codes_ref(p, g, &mut self.codes),
        }
    }
}

/// The zero `z` of every lane of row group `g` in scale group `s`.
pub(super) fn zeros_of(p: &IlPrepared, g: usize, s: usize) -> [i16; LANES] {
    std::array::from_fn(|lane| group_params(p, g, s, lane).2 as i16)
}

/// Scalar twin of `x86_il16::fill_codes`: the codes `L(u) − z` of row
/// group `g` in the panel layout.
pub fn fill_codes_ref(p: &IlPrepared, g: usize, codes: &mut [i16]) {
    let (nb, cb) = (p.nb, p.code_bytes());
    let gc = p.group_codes(g);
    let mut u = [0u8; 32];
    for b in 0..nb {
        let blk = &gc[b * cb..(b + 1) * cb];
        let z = zeros_of(p, g, b / p.gb);
        for lane in 0..LANES {
            let (h, j) = (lane / 8, lane % 8);
            codes_of(p, blk, lane, &mut u);
            let base = (h * nb + b) * 256 + 2 * j;
            for (pair, c) in u.chunks_exact(2).enumerate() {
                codes[base + 16 * pair] = c[0] as i16 - z[lane];
                codes[base + 16 * pair + 1] = c[1] as i16 - z[lane];
            }
        }
    }
}

/// The 32 codes `L(u)` of row `lane` in one interleaved block `blk`.
#[inline(always)]
fn codes_of(p: &IlPrepared, blk: &[u8], lane: usize, u: &mut [u8; 32]) {
    if p.bits == 8 {
        for c in 0..8 {
            u[4 * c..4 * c + 4].copy_from_slice(&blk[64 * c + 4 * lane..64 * c + 4 * lane + 4]);
        }
    } else {
        for pv in 0..4 {
            for t in 0..4 {
                let byte = blk[64 * pv + 4 * lane + t];
                u[4 * pv + t] = byte & 15;
                u[16 + 4 * pv + t] = byte >> 4;
            }
        }
    }
    if let Some(l) = p.lut {
        for v in u.iter_mut() {
            *v = l[*v as usize];
        }
    }
}

/// Scalar twin of the tile kernel: `out[r·ld + j] = w[j] · x[i0 + r]` for
/// the panel's first `rows` (≤ 16) weight rows and `nr` activation rows,
/// with the f32 operations of `x86_il16::tile` in the same order.
#[allow(clippy::too_many_arguments)]
pub fn tile_ref(
    panel: &Panel16,
    rows: usize,
    x: &Act16,
    i0: usize,
    nr: usize,
    out: &mut [f32],
    ld: usize,
) {
    let nb = panel.nb;
    for r in 0..nr {
        let xq = &x.q[(i0 + r) * x.k..(i0 + r + 1) * x.k];
        let (dx, sx) = (&x.d[(i0 + r) * nb..], &x.s[(i0 + r) * nb..]);
        for j in 0..rows {
            let (h, jj) = (j / 8, j % 8);
            let mut acc = 0.0f32;
            // Pairs per integer sum: 8 (split) or all 16.
            let per = if panel.split { 8 } else { 16 };
            for b in 0..nb {
                let codes = &panel.codes[(h * nb + b) * 256..];
                let at = (h * nb + b) * 8 + jj;
                let scale = panel.d[at] * dx[b];
                for p0 in (0..16).step_by(per) {
                    let mut dot = 0i32;
                    for pair in p0..p0 + per {
                        let c = &codes[16 * pair + 2 * jj..];
                        let q = &xq[32 * b + 2 * pair..];
                        dot += c[0] as i32 * q[0] as i32 + c[1] as i32 * q[1] as i32;
                    }
                    acc = (dot as f32).mul_add(scale, acc);
                }
                if panel.min {
                    acc = panel.m[at].mul_add(sx[b], acc);
                }
            }
            out[r * ld + j] = acc;
        }
    }
}

/// The tile kernel of `isa` (AVX2 on x86 with AVX2 or AVX-512 VNNI; the
/// scalar twin elsewhere).
#[allow(clippy::too_many_arguments)]
fn tile(
    isa: Isa,
    panel: &Panel16,
    rows: usize,
    x: &Act16,
    i0: usize,
    nr: usize,
    out: &mut [f32],
    ld: usize,
) {
    assert!(rows <= LANES && i0 + nr <= x.n && x.k == 32 * panel.nb);
    assert!(
        nr == 0 || out.len() >= (nr - 1) * ld + rows,
        "tile output size"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => {
            // SAFETY: the ISA was checked by the caller; shapes above.
            unsafe { super::x86_il16::tile(panel, rows, x, i0, nr, out, ld) }
        }
        _ => tile_ref(panel, rows, x, i0, nr, out, ld),
    }
}

thread_local! {
    static SCRATCH: RefCell<Act16> = RefCell::new(Act16::default());
    static PANEL: RefCell<Panel16> = RefCell::new(Panel16::default());
}

/// Distinguishes calls, so a thread's cached panel is never reused by a
/// later call.
static CALLS: AtomicU64 = AtomicU64::new(1);

/// `y[n, m] = x[n, k] · wᵀ` over the interleaved form with 16-bit
/// activations, with the detected ISA.
pub fn matmul_il16(p: &IlPrepared, x: &[f32], n: usize) -> Result<Vec<f32>> {
    matmul_il16_with(Isa::detect(), p, x, n)
}

/// [`matmul_il16`] with a chosen ISA (tests and benchmarks).
pub fn matmul_il16_with(isa: Isa, p: &IlPrepared, x: &[f32], n: usize) -> Result<Vec<f32>> {
    let (y, work) = super::il::output(isa, p, x, n)?;
    if !work {
        return Ok(y);
    }
    Ok(matmul16(isa, x, n, p.cols, p.rows, QMAX, y, |panel, g| {
        panel.fill(isa, p, g)
    }))
}

/// The threading of every 16-bit-activation matmul: quantizes `x[n, k]`
/// ([`Act16`], codes up to ±`qmax`), then fills `y[n, m]` (zeroed) by tiles, each task decoding
/// the row groups it sweeps with `fill(panel, g)` (16 weight rows from
/// `16·g`) once per call into its thread's panel.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul16<F>(
    isa: Isa,
    x: &[f32],
    n: usize,
    k: usize,
    m: usize,
    qmax: f32,
    mut y: Vec<f32>,
    fill: F,
) -> Vec<f32>
where
    F: Fn(&mut Panel16, usize) + Sync,
{
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let run = |act: &Act16, y: &mut [f32]| {
        compute_tiled(2 * k, GROUP, n, m, y, |j0, j1, i0, out| {
            let ld = j1 - j0;
            let nr = out.len() / ld;
            let sweep = |panel: &Panel16, g: usize, out: &mut [f32]| {
                let col = g * LANES - j0;
                let rows = (j1 - g * LANES).min(LANES);
                for r0 in (0..nr).step_by(TILE) {
                    let t = (nr - r0).min(TILE);
                    tile(
                        isa,
                        panel,
                        rows,
                        act,
                        i0 + r0,
                        t,
                        &mut out[r0 * ld + col..],
                        ld,
                    );
                }
            };
            for g in j0 / LANES..j1.div_ceil(LANES) {
                PANEL.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut panel) => {
                        if panel.tag != (call, g) {
                            fill(&mut panel, g);
                            panel.tag = (call, g);
                        }
                        sweep(&panel, g, out)
                    }
                    Err(_) => {
                        let mut panel = Panel16::default();
                        fill(&mut panel, g);
                        sweep(&panel, g, out)
                    }
                });
            }
        })
    };
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut act) => {
            act.quantize(isa, x, n, k, qmax);
            run(&act, &mut y)
        }
        Err(_) => {
            let mut act = Act16::default();
            act.quantize(isa, x, n, k, qmax);
            run(&act, &mut y)
        }
    });
    y
}

#[cfg(test)]
mod tests;
