//! `y[n, m] = x[n, k] · w[m, k]ᵀ (+ bias)`.
//!
//! GGML block formats (Q4_0 … Q6_K) run natively on their stored bytes in
//! [`super::qmatmul`] (fused dequantize-and-dot, no f32 copy), Q4_0/Q4_1/
//! Q8_0 on x86 (AVX2, AVX-512 VNNI) on their row-interleaved repack
//! ([`super::qmatmul::il`]);
//! metal-marlin formats on their codes repacked once at load
//! ([`super::qmatmul::mm`]). Dense weights (F32, F16, BF16) on their
//! stored bytes in [`dense`] (F16/BF16 widened in registers, no f32 copy),
//! in both modes, except prompt rows in the default mode on AVX2, which
//! multiply 15-bit activations by the weights rounded to 14-bit codes
//! ([`dense16`]); other formats in the exact mode over their f32 values.
//! Prefill in the default precision runs quantized weights with 16-bit
//! activations on x86 where the format has a row-interleaved form
//! ([`super::qmatmul::il16`]), elsewhere through dequantized f32 panels and
//! the dense tiles ([`ActPrecision`]).

pub mod dense;

use mm_core::{Error, Result, RowKind, Tensor, WeightData, WeightFormat};

use super::qmatmul::dense16;
use crate::{dense_f32, il_prepared, mm_prepared};

/// Dot product with eight accumulators (vectorizes to AVX/NEON).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

use mm_core::backend::matmul_dims as check;

/// How the native quantized kernels see the activations.
///
/// The integer kernels multiply 8-bit activations (32- or 256-value blocks,
/// one scale each, as llama.cpp's CPU kernels). On its own that rounding
/// moves a small model's next-token distribution measurably (SmolLM2-135M:
/// mean KL 2.3e-3 against transformers, enough to flip a close first token).
/// [`ActPrecision::Int8Residual`] adds a second pass over what the first
/// rounding lost, `r = x − d·q`, itself quantized to 8 bits: `x ≈ d·q +
/// d_r·q_r`, about 15 significant bits, through the same kernels (the
/// remainder rows ride along the activation rows, so a decode step still
/// reads every weight once). From [`PANEL_ROWS`] activation rows on
/// (prefill) one pass suffices: on x86, formats with a row-interleaved form
/// (Q4_0, Q4_1, Q8_0, int4/int8, fp4, mxfp4) multiply 16-bit activations
/// with `vpmaddwd` ([`super::qmatmul::il16`]: about 16 significant bits, as
/// the two 8-bit passes, 1.4× the f32 panels on SmolLM2's linears); other formats
/// and CPUs dequantize the weight a panel of rows at a time and multiply it
/// with f32 activations ([`dense::matmul_panels_with`]): exact activations,
/// and faster than two integer passes once a panel feeds that many rows.
/// Formats whose kernels take f32 activations (nf4, fp8) run once either
/// way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ActPrecision {
    /// One 8-bit pass (llama.cpp's precision, the fastest prefill).
    Int8,
    /// 8-bit activations plus their 8-bit remainder; for prefill 16-bit
    /// activations or f32 activations on dequantized panels (the default).
    #[default]
    Int8Residual,
}

/// Fast CPU matmul: native kernels with one 8-bit activation pass
/// ([`ActPrecision::Int8`]).
pub fn matmul(x: &Tensor, w: &WeightData, bias: Option<&Tensor>) -> Result<Tensor> {
    matmul_with(x, w, bias, ActPrecision::Int8)
}

/// Fast CPU matmul with the given activation precision; dense weights run
/// [`matmul_dense`], from [`PANEL_ROWS`] rows with 16-bit operands where
/// [`dense16`] is active.
pub fn matmul_with(
    x: &Tensor,
    w: &WeightData,
    bias: Option<&Tensor>,
    prec: ActPrecision,
) -> Result<Tensor> {
    let (n, k, m) = check(x, w, bias)?;
    let xs = x.as_slice()?;
    let panels = (prec == ActPrecision::Int8Residual && int8_block(w).is_some())
        || dense16::active(w.format, k)
        || (prec == ActPrecision::Int8Residual && super::qmatmul::trellis::supports(w));
    if n >= PANEL_ROWS && panels {
        let mut y = matmul_panels(w, xs, n, k, m)?;
        add_bias(&mut y, bias, m)?;
        return Tensor::from_vec(vec![n, m], y);
    }
    let block = match int8_block(w) {
        Some(b) if prec == ActPrecision::Int8Residual && k % b == 0 => b,
        _ => {
            let Some(mut y) = native(w, xs, n)? else {
                return matmul_dense(x, w, bias);
            };
            add_bias(&mut y, bias, m)?;
            return Tensor::from_vec(vec![n, m], y);
        }
    };
    let mut y = residual(w, xs, n, k, block)?;
    add_bias(&mut y, bias, m)?;
    Tensor::from_vec(vec![n, m], y)
}

/// `x[n, k] · wᵀ` as two 8-bit passes ([`ActPrecision::Int8Residual`]):
/// the activations' 8-bit blocks of `block` values and their remainders,
/// summed. Each row's result depends on that row alone.
fn residual(w: &WeightData, xs: &[f32], n: usize, k: usize, block: usize) -> Result<Vec<f32>> {
    let mut xr = mm_core::host_pool::take(2 * n * k);
    xr.extend_from_slice(xs);
    xr.resize(2 * n * k, 0.0);
    for (xrow, rrow) in xs.chunks_exact(k).zip(xr[n * k..].chunks_exact_mut(k)) {
        super::qmatmul::q8::residual_row(block, xrow, rrow);
    }
    let y2 = native_int8(w, &xr, 2 * n)?;
    let (a, b) = y2.split_at(y2.len() / 2);
    let mut y = mm_core::host_pool::take(a.len());
    y.extend(a.iter().zip(b).map(|(a, b)| a + b));
    mm_core::host_pool::recycle(xr);
    mm_core::host_pool::recycle(y2);
    Ok(y)
}

/// The default precision with each row's kind given ([`RowKind`]): prompt
/// rows through [`matmul_panels`] (16-bit activations or f32 panels),
/// generated rows through the two 8-bit
/// passes, whatever their number, so a row gets the same arithmetic in any
/// batch (bit for bit: the kernels of either path compute each row on its
/// own). Formats without an 8-bit kernel run [`matmul_with`].
pub fn matmul_kinds(
    x: &Tensor,
    w: &WeightData,
    bias: Option<&Tensor>,
    kinds: &[RowKind],
) -> Result<Tensor> {
    let (n, k, m) = check(x, w, bias)?;
    if super::qmatmul::trellis::supports(w) {
        // Prompt rows through panels, generated rows through the tile
        // kernel, whatever the batch (f32 activations both).
        use super::qmatmul::trellis::{matmul_trellis, matmul_trellis_panels};
        let xs = x.as_slice()?;
        let prompt = |xs: &[f32], n: usize| matmul_trellis_panels(w, xs, n);
        let generated = |xs: &[f32], n: usize| matmul_trellis(w, xs, n);
        let mut y = by_kind(xs, k, m, kinds, prompt, generated)?;
        add_bias(&mut y, bias, m)?;
        return Tensor::from_vec(vec![n, m], y);
    }
    let Some(block) = int8_block(w) else {
        return matmul_with(x, w, bias, ActPrecision::Int8Residual);
    };
    let xs = x.as_slice()?;
    // Rows whose length is not whole activation blocks take one 8-bit pass.
    let generated = |xs: &[f32], n: usize| -> Result<Vec<f32>> {
        if k % block == 0 {
            residual(w, xs, n, k, block)
        } else {
            native_int8(w, xs, n)
        }
    };
    let mut y = by_kind(
        xs,
        k,
        m,
        kinds,
        |xs, n| matmul_panels(w, xs, n, k, m),
        generated,
    )?;
    add_bias(&mut y, bias, m)?;
    Tensor::from_vec(vec![n, m], y)
}

/// [`matmul_dense`] with each row's kind: every row gets the dense
/// kernels' arithmetic of its kind whatever the row count
/// ([`dense::matmul_kind_with`]): batch invariance of dense weights and
/// of the exact mode. With `fast` (the default precision), prompt rows of
/// dense weights take 16-bit operands where [`dense16`] is active.
pub fn matmul_dense_kinds(
    x: &Tensor,
    w: &WeightData,
    bias: Option<&Tensor>,
    kinds: &[RowKind],
    fast: bool,
) -> Result<Tensor> {
    let (n, k, m) = check(x, w, bias)?;
    let xs = x.as_slice()?;
    let widened;
    let (format, bytes): (WeightFormat, &[u8]) = if w.format.is_dense() {
        (w.format, &w.bytes)
    } else {
        widened = dense_f32(w)?;
        (WeightFormat::F32, bytemuck::cast_slice(&widened.0))
    };
    let simd = dense::Simd::detect();
    let run = |kind: RowKind| {
        move |xs: &[f32], n: usize| dense::matmul_kind_with(simd, format, bytes, xs, n, k, m, kind)
    };
    let sixteen = fast && dense16::active(format, k);
    let prompt = |xs: &[f32], n: usize| {
        if sixteen {
            dense16::matmul_dense16(format, bytes, xs, n, k, m)
        } else {
            run(RowKind::Prompt)(xs, n)
        }
    };
    let mut y = by_kind(xs, k, m, kinds, prompt, run(RowKind::Generated))?;
    add_bias(&mut y, bias, m)?;
    Tensor::from_vec(vec![n, m], y)
}

/// `y[n, m]` with the prompt rows of `xs` (per `kinds`) computed by
/// `prompt` and the others by `generated`, each called once on its rows
/// gathered (not at all when it has none).
fn by_kind(
    xs: &[f32],
    k: usize,
    m: usize,
    kinds: &[RowKind],
    prompt: impl Fn(&[f32], usize) -> Result<Vec<f32>>,
    generated: impl Fn(&[f32], usize) -> Result<Vec<f32>>,
) -> Result<Vec<f32>> {
    let n = xs.len() / k.max(1);
    if kinds.len() != n {
        return Err(Error::Invalid(format!(
            "matmul: {} row kinds for {n} rows",
            kinds.len()
        )));
    }
    let pr: Vec<usize> = (0..n).filter(|&i| kinds[i] == RowKind::Prompt).collect();
    if pr.len() == n {
        return prompt(xs, n);
    }
    if pr.is_empty() {
        return generated(xs, n);
    }
    let gen: Vec<usize> = (0..n).filter(|&i| kinds[i] != RowKind::Prompt).collect();
    let rows = |idx: &[usize]| -> Vec<f32> {
        idx.iter()
            .flat_map(|&i| &xs[i * k..(i + 1) * k])
            .copied()
            .collect()
    };
    let yp = prompt(&rows(&pr), pr.len())?;
    let yg = generated(&rows(&gen), gen.len())?;
    let mut y = mm_core::host_pool::zeroed(n * m);
    for (idx, part) in [(&pr, &yp), (&gen, &yg)] {
        for (&i, src) in idx.iter().zip(part.chunks_exact(m)) {
            y[i * m..(i + 1) * m].copy_from_slice(src);
        }
    }
    Ok(y)
}

/// Activation rows from which [`ActPrecision::Int8Residual`] multiplies a
/// quantized weight through its prefill path ([`matmul_panels`]) instead
/// of two 8-bit passes: with enough rows sharing each decoded panel, one
/// pass outruns the doubled integer dot products (SmolLM2's linears, Q4_0,
/// AVX2, 2 threads, `qprobe smol N Q4_0`: f32 panels even at 16 rows and
/// 1.4× faster at 32; 16-bit activations 1.25–1.36× the two passes at 24
/// rows and 1.2–1.4× at 32).
const PANEL_ROWS: usize = 24;

/// `x[n, k] · wᵀ` for prefill: 16-bit activations over the interleaved
/// form on x86 ([`il16`](super::qmatmul::il16)) or over dense weights
/// rounded to 14 bits ([`dense16`]), else f32 activations over
/// `w` dequantized a panel of rows at a time
/// ([`dense::matmul_panels_with`]).
fn matmul_panels(w: &WeightData, x: &[f32], n: usize, k: usize, m: usize) -> Result<Vec<f32>> {
    use super::qmatmul::{il, il16, trellis, Isa};
    if trellis::supports(w) {
        return trellis::matmul_trellis_panels(w, x, n);
    }
    if il::active(Isa::detect(), w) {
        return il16::matmul_il16(&*il_prepared(w)?, x, n);
    }
    if dense16::active(w.format, k) {
        return dense16::matmul_dense16(w.format, &w.bytes, x, n, k, m);
    }
    let failed = std::sync::Mutex::new(None);
    let y = dense::matmul_panels_with(dense::Simd::detect(), x, n, k, m, |j0, j1, panel| {
        if let Err(e) = mm_quant::dequantize_rows_into(w, j0..j1, panel) {
            failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(e);
        }
    })?;
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(y),
    }
}

/// The activation block of the 8-bit kernel that runs `w`, or `None` when
/// its kernel takes f32 activations or there is none (dense weights).
fn int8_block(w: &WeightData) -> Option<usize> {
    use super::qmatmul::{act_kind, mm};
    if super::qmatmul::il::active(super::qmatmul::Isa::detect(), w) {
        return Some(32);
    }
    if super::qmatmul::supports(w.format) {
        return Some(act_kind(w.format).block());
    }
    match w.format {
        WeightFormat::Mm(f) if mm::supports(w) && mm::path(f.kind) == mm::Path::Int => Some(32),
        _ => None,
    }
}

/// [`native`] for a weight [`int8_block`] found a kernel for.
fn native_int8(w: &WeightData, x: &[f32], n: usize) -> Result<Vec<f32>> {
    native(w, x, n)?.ok_or_else(|| {
        Error::Other(format!(
            "{} has an 8-bit kernel but ran none",
            w.format.name()
        ))
    })
}

/// `x[n, k] · wᵀ` through the weight's native kernel (no bias), or `None`
/// when it has none.
fn native(w: &WeightData, x: &[f32], n: usize) -> Result<Option<Vec<f32>>> {
    use super::qmatmul::{il, matmul_q, mm, supports, Isa};
    Ok(Some(if il::active(Isa::detect(), w) {
        il::matmul_il(&*il_prepared(w)?, x, n)?
    } else if supports(w.format) {
        let (m, k) = w.dims2()?;
        matmul_q(w.format, &w.bytes, x, n, k, m)?
    } else if mm::supports(w) {
        mm::matmul_mm(&*mm_prepared(w)?, x, n)?
    } else if super::qmatmul::trellis::supports(w) {
        super::qmatmul::trellis::matmul_trellis(w, x, n)?
    } else {
        return Ok(None);
    }))
}

/// Matmul with f32 activations (the reference-precision path): dense
/// weights (F32, F16, BF16) on their stored bytes ([`dense`]), any other
/// format over its f32 values, dequantized once (`dense_f32`).
pub fn matmul_dense(x: &Tensor, w: &WeightData, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, k, m) = check(x, w, bias)?;
    let xs = x.as_slice()?;
    let mut y = if w.format.is_dense() {
        dense::matmul(w.format, &w.bytes, xs, n, k, m)?
    } else {
        let wd = dense_f32(w)?;
        dense::matmul(WeightFormat::F32, bytemuck::cast_slice(&wd.0), xs, n, k, m)?
    };
    add_bias(&mut y, bias, m)?;
    Tensor::from_vec(vec![n, m], y)
}

fn add_bias(y: &mut [f32], bias: Option<&Tensor>, m: usize) -> Result<()> {
    if let Some(b) = bias {
        let b = b.as_slice()?;
        y.chunks_mut(m)
            .for_each(|row| row.iter_mut().zip(b).for_each(|(v, b)| *v += b));
    }
    Ok(())
}

/// Scalar reference: f64 accumulation over the dequantized weight.
pub fn matmul_ref(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    n: usize,
    k: usize,
    m: usize,
) -> Vec<f32> {
    let mut y = vec![0.0f32; n * m];
    for i in 0..n {
        for j in 0..m {
            let mut s = 0.0f64;
            for t in 0..k {
                s += x[i * k + t] as f64 * w[j * k + t] as f64;
            }
            y[i * m + j] = (s + bias.map_or(0.0, |b| b[j] as f64)) as f32;
        }
    }
    y
}
