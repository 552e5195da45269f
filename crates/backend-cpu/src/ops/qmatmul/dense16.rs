//! Prompt rows of dense weights (F16, BF16, F32) in the default precision
//! on AVX2: the 16-bit integer tile of [`il16`](super::il16) over weights
//! rounded to 14-bit codes per 32-block and 15-bit activations.
//!
//! **Why.** Prefill is compute-bound, and on AVX2 `vpmaddwd` does twice the
//! multiply-adds of an f32 FMA (1.4–1.6× sustained on Zen 3, `isa_peak`).
//! The f32 tiles of dense weights (`ops::matmul::dense`) reach the FMA
//! ceiling; this path moves F16/BF16 prefill onto the integer units
//! (whole-process F16 pp512 1.13–1.40× the f32 tiles, docs/BENCHMARKS.md).
//! Its cost: each call decodes the panel (about 1.2 cycles per weight), so
//! prompts under ~32 rows run slower than on the f32 tiles.
//!
//! **Weights**: each task decodes its 16-row group once per call into the
//! [`Panel16`] layout. Per row and 32-block: `d = amax/8191`, codes
//! `c = round_ties_even(w · 8191/amax)`. A block holding a NaN or an
//! infinity gets `d = NaN` (codes 0): its outputs are NaN, as in f32.
//! **Activations**: [`Act16`](super::il16::Act16) with codes up to ±16383.
//! **Sums**: the panel is `split`: each 32-block's exact integer sum is
//! taken as two sums of 16 products (under 16·8191·16383 < 2³¹), each
//! converted and scaled by one FMA.
//!
//! **Precision.** At most `amax/16382` per weight (relative rms error
//! ≈ 6e-5 on uniform weights) and `amax/32766` per activation. Measured on
//! SmolLM2-135M in F16 against the f32 path (`--exact`), over the fixture
//! prompts' 42 positions: mean KL 2.4e-6 (the f16 KV cache alone: 1.8e-6),
//! where llama.cpp's F16 CPU path, which rounds activations to f16, is at
//! 6.8e-6. Fewer bits cost visibly: 12-bit weights with 16-bit activations
//! (one sum per block) gave 1.5e-5, 14-bit with 14-bit 5.2e-6.
//! `CpuBackend::exact()` keeps f32 activations and the stored weights;
//! generated (decode) rows are memory-bound and stay on the f32 kernels.
//!
//! **Twins.** [`fill_ref`] is the scalar twin of `x86_il16::fill_dense`
//! (the same codes and scales bit for bit); the tile is il16's.

use mm_core::{Error, Result, WeightFormat};

use super::il::LANES;
use super::il16::{matmul16, scales, Panel16};
use super::Isa;
use crate::ops::matmul::dense::{elem_bytes, value_ref, Simd};

/// Largest weight code (14-bit, symmetric).
pub const WMAX: f32 = 8191.0;
/// Largest activation code (15-bit, symmetric): with [`WMAX`], an integer
/// sum of 16 products stays under 16·8191·16383 < 2³¹ (the panel is
/// `split`; 32 would not).
pub const AMAX: f32 = 16383.0;

/// Whether prompt rows of a dense `format` weight with rows of `k` values
/// take this path here: x86 whose dense kernels run AVX2 (measured there;
/// AVX-512 machines keep their 16-lane f32 tiles) and whole 32-blocks.
pub fn active(format: WeightFormat, k: usize) -> bool {
    format.is_dense()
        && k % 32 == 0
        && k > 0
        && Simd::detect() == Simd::Avx2
        && matches!(Isa::detect(), Isa::Avx2 | Isa::Avx512Vnni)
}

/// `y[n, m] = x[n, k] · wᵀ` for `w` holding `m` rows of `k` values (`k` a
/// multiple of 32) stored in `format`, with the detected ISA.
pub fn matmul_dense16(
    format: WeightFormat,
    w: &[u8],
    x: &[f32],
    n: usize,
    k: usize,
    m: usize,
) -> Result<Vec<f32>> {
    matmul_dense16_with(Isa::detect(), format, w, x, n, k, m)
}

/// [`matmul_dense16`] with a chosen ISA (tests and benchmarks).
pub fn matmul_dense16_with(
    isa: Isa,
    format: WeightFormat,
    w: &[u8],
    x: &[f32],
    n: usize,
    k: usize,
    m: usize,
) -> Result<Vec<f32>> {
    super::check_isa(isa)?;
    let eb = elem_bytes(format)?;
    if k % 32 != 0 {
        return Err(Error::Invalid(format!(
            "16-bit dense matmul: rows of {k} values are not whole 32-blocks"
        )));
    }
    super::check_shapes("16-bit dense matmul", format, w, x, (n, k, m))?;
    let y = mm_core::host_pool::zeroed(n * m);
    if n == 0 || m == 0 || k == 0 {
        return Ok(y);
    }
    Ok(matmul16(isa, x, n, k, m, AMAX, y, |panel, g| {
        let j0 = g * LANES;
        let rows = (m - j0).min(LANES);
        fill(
            isa,
            format,
            &w[j0 * k * eb..(j0 + rows) * k * eb],
            rows,
            k,
            panel,
        )
    }))
}

/// Decodes `rows` (≤ 16) weight rows of `k` values into `panel` with
/// `isa`'s code (the same panel at every level); missing rows get zero
/// codes and scales.
fn fill(isa: Isa, format: WeightFormat, w: &[u8], rows: usize, k: usize, panel: &mut Panel16) {
    size(panel, k, rows);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => {
            // SAFETY: the caller checked the ISA; `w` holds `rows` rows of
            // `k` values and the panel is sized above.
            unsafe { super::x86_il16::fill_dense(format, w, rows, k, panel) }
        }
        _ => fill_ref(format, w, rows, k, panel),
    }
}

/// Sizes `panel` for `rows` rows of `k` values; a partial group's codes
/// and scales are zeroed (a full one's are all written by the decode).
fn size(panel: &mut Panel16, k: usize, rows: usize) {
    let nb = k / 32;
    panel.nb = nb;
    panel.min = false;
    panel.split = true;
    panel.m.clear();
    panel.codes.resize(2 * nb * 256, 0);
    panel.d.resize(2 * nb * 8, 0.0);
    if rows < LANES {
        panel.codes.fill(0);
        panel.d.fill(0.0);
    }
}

/// Scalar twin of `x86_il16::fill_dense`: the codes and scales of `rows`
/// rows of `w` in the panel layout (module docs).
pub fn fill_ref(format: WeightFormat, w: &[u8], rows: usize, k: usize, panel: &mut Panel16) {
    size(panel, k, rows);
    let nb = k / 32;
    let mut v = [0.0f32; 32];
    for j in 0..rows {
        let (h, jj) = (j / 8, j % 8);
        for b in 0..nb {
            for (t, o) in v.iter_mut().enumerate() {
                *o = value_ref(format, w, j * k + 32 * b + t);
            }
            let at = (h * nb + b) * 8 + jj;
            let base = (h * nb + b) * 256 + 2 * jj;
            if !v.iter().all(|x| x.is_finite()) {
                panel.d[at] = f32::NAN;
                for t in 0..32 {
                    panel.codes[base + 16 * (t / 2) + t % 2] = 0;
                }
                continue;
            }
            let amax = v.iter().fold(0.0f32, |a, x| a.max(x.abs()));
            let (d, inv) = scales(amax, WMAX);
            panel.d[at] = d;
            for (t, x) in v.iter().enumerate() {
                panel.codes[base + 16 * (t / 2) + t % 2] = (x * inv).round_ties_even() as i16;
            }
        }
    }
}

#[cfg(test)]
mod tests;
