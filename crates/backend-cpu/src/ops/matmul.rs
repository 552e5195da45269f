//! `y[n, m] = x[n, k] · w[m, k]ᵀ (+ bias)`.
//!
//! GGML block formats (Q4_0 … Q6_K) run natively on their stored bytes in
//! [`super::qmatmul`] (fused dequantize-and-dot, no f32 copy), Q4_0/Q4_1/
//! Q8_0 on x86 (AVX2, AVX-512 VNNI) on their row-interleaved repack
//! ([`super::qmatmul::il`]);
//! metal-marlin formats on their codes repacked once at load
//! ([`super::qmatmul::mm`]). Dense
//! weights (F32, and F16/BF16 widened once to f32, see `prepared.rs`):
//! few rows (decode): [`crate::pool`] over blocks of output rows, each a dot product
//! with eight independent accumulators so the compiler vectorizes it. Many
//! rows (prefill): the `gemm` crate's blocked, multi-threaded SGEMM.

use mm_core::{Error, Result, Tensor, WeightData};

use crate::{dense_f32, il_prepared, mm_prepared};

/// Rows of `x` up to which the dot-product path is used.
const GEMV_MAX_ROWS: usize = 4;

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

fn check(x: &Tensor, w: &WeightData, bias: Option<&Tensor>) -> Result<(usize, usize, usize)> {
    let (n, k) = x.dims2()?;
    let (m, kw) = w.dims2()?;
    if k != kw {
        return Err(Error::Invalid(format!(
            "matmul: x has {k} columns, weight {:?} expects {kw}",
            w.shape
        )));
    }
    if let Some(b) = bias {
        if b.numel() != m {
            return Err(Error::Invalid(format!(
                "matmul: bias has {} values, expected {m}",
                b.numel()
            )));
        }
    }
    Ok((n, k, m))
}

/// Fast CPU matmul.
pub fn matmul(x: &Tensor, w: &WeightData, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, k, m) = check(x, w, bias)?;
    if super::qmatmul::il::active(super::qmatmul::Isa::detect(), w) {
        let p = il_prepared(w)?;
        let mut y = super::qmatmul::il::matmul_il(&p, x.as_slice()?, n)?;
        add_bias(&mut y, bias, m)?;
        return Tensor::from_vec(vec![n, m], y);
    }
    if super::qmatmul::supports(w.format) {
        let mut y = super::qmatmul::matmul_q(w.format, &w.bytes, x.as_slice()?, n, k, m)?;
        add_bias(&mut y, bias, m)?;
        return Tensor::from_vec(vec![n, m], y);
    }
    if super::qmatmul::mm::supports(w) {
        let p = mm_prepared(w)?;
        let mut y = super::qmatmul::mm::matmul_mm(&p, x.as_slice()?, n)?;
        add_bias(&mut y, bias, m)?;
        return Tensor::from_vec(vec![n, m], y);
    }
    matmul_dense(x, w, bias)
}

/// Matmul over the weight's dequantized f32 form with f32 activations
/// (any format; the reference-precision path).
pub fn matmul_dense(x: &Tensor, w: &WeightData, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, k, m) = check(x, w, bias)?;
    let wd = dense_f32(w)?;
    let (xs, ws) = (x.as_slice()?, wd.0.as_slice());
    let mut y = vec![0.0f32; n * m];
    if n <= GEMV_MAX_ROWS {
        gemv(xs, ws, &mut y, n, k, m);
    } else {
        // SAFETY: pointers and strides describe the live slices xs [n,k],
        // ws viewed as [k,m] column-major (= w[m,k] row-major), y [n,m].
        unsafe {
            gemm::gemm(
                n,
                m,
                k,
                y.as_mut_ptr(),
                1,
                m as isize,
                false,
                xs.as_ptr(),
                1,
                k as isize,
                ws.as_ptr(),
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
    }
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

fn gemv(xs: &[f32], ws: &[f32], y: &mut [f32], n: usize, k: usize, m: usize) {
    const BLOCK: usize = 16;
    // y is [n, m]; split output features into blocks, each block computes
    // all n rows so every weight row is read once.
    let mut yt = vec![0.0f32; m * n];
    crate::pool::for_each_chunk_mut(&mut yt, BLOCK * n, |bi, out| {
        for (r, o) in out.chunks_mut(n).enumerate() {
            let j = bi * BLOCK + r;
            let wrow = &ws[j * k..(j + 1) * k];
            for (i, o) in o.iter_mut().enumerate() {
                *o = dot(&xs[i * k..(i + 1) * k], wrow);
            }
        }
    });
    for j in 0..m {
        for i in 0..n {
            y[i * m + j] = yt[j * n + i];
        }
    }
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
